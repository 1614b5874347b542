#!/usr/bin/env bash
# Starts N local hooklens processes as one run over several processes, the way torchrun does: each
# gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, and the same arguments.
#
#   scripts/launch.sh N [hooklens arguments...]
#   scripts/launch.sh 2 capture --model models/toy-neo --text-file F --seq-len 64 --max-sequences 200 --out runs/val
#
# Two machines (A at 10.0.0.1 serves the rendezvous; --out on storage both share, else add
# --local-out on both and join the parts with `hooklens merge` afterwards):
#   on A: NODE_RANK=0 NNODES=2 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 scripts/launch.sh 2 capture ... --out /shared/run
#   on B: NODE_RANK=1 NNODES=2 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 scripts/launch.sh 2 capture ... --out /shared/run
# Each machine starts N processes: global ranks NODE_RANK*N .. NODE_RANK*N+N-1 of NNODES*N.
# GLOO_SOCKET_IFNAME=eth0 picks the network interface the processes talk over (as for torch).
#
# MASTER_PORT defaults to a free port on a single machine (and 29500 with NNODES > 1). The exit
# status is the first failing process's (0 when all succeed); every process's output is prefixed
# with its rank. HOOKLENS (default build/bin/hooklens) is the program started. Give --threads: the
# processes of one machine share its cores (e.g. --threads 1 for one process per core).
set -euo pipefail
if (($# < 1)) || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/launch.sh N [hooklens arguments...]   (N processes on this machine)" >&2
  exit 2
fi
n=$1
shift
here=$(cd "$(dirname "$0")/.." && pwd)
hooklens=${HOOKLENS:-$here/build/bin/hooklens}
nnodes=${NNODES:-1}
node=${NODE_RANK:-0}
if ! [[ $nnodes =~ ^[1-9][0-9]*$ && $node =~ ^[0-9]+$ ]] || ((node >= nnodes)); then
  echo "launch.sh: NODE_RANK=$node must be below NNODES=$nnodes" >&2
  exit 2
fi
addr=${MASTER_ADDR:-127.0.0.1}
if [[ -z ${MASTER_PORT:-} ]]; then
  if ((nnodes > 1)); then
    port=29500
  else  # a port free now (the kernel's choice), for rank 0 to serve
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
else
  port=$MASTER_PORT
fi

pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; }
trap 'stop; exit 130' INT TERM
for ((local = 0; local < n; ++local)); do
  rank=$((node * n + local))
  RANK=$rank WORLD_SIZE=$((nnodes * n)) LOCAL_RANK=$local MASTER_ADDR=$addr MASTER_PORT=$port \
    "$hooklens" "$@" > >(sed -u "s/^/[rank $rank] /") 2> >(sed -u "s/^/[rank $rank] /" >&2) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  code=0
  wait "$pid" || code=$?
  if ((status == 0 && code != 0)); then status=$code; fi
done
exit "$status"
