#!/usr/bin/env bash
# Writes the seeds of the run_directory and analysis_report fuzz targets: small real run
# directories made with build/bin/hooklens on the shared fixtures (a capture with every analyzer's
# report, a sliced capture, greedy generation, a masked-diffusion run with classifier-free guidance,
# GPT-Neo's local attention, the parts of a capture over two processes), captures stored as F16, converted to the targets' part format
# (manifest.json first, then "==> NAME <==" per file); and a few hand-broken runs and reports.
# Needs a normal build (build/, or BUILD=DIR) and ../shared/fixtures (or FIXTURES=DIR). The
# output is committed; rerun only to change the seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
FIXTURES=${FIXTURES:-../shared/fixtures}
HL="$BUILD/bin/hooklens"
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
export HOOKLENS_PLUGIN_PATH=
OUT=fuzz/corpus/run_directory REPORTS=fuzz/corpus/analysis_report
mkdir -p "$OUT" "$REPORTS"

PATTERNS='blocks.*.attn.hook_pattern'
"$HL" capture --model "$FIXTURES/tiny-gpt2-a" --prompt-ids 464,3797,3332,319 --dtype F16 --out "$RUNS/analyzed" \
  --hooks "$PATTERNS,blocks.*.mlp.hook_post" --analyze attention_stats,head_detectors,token_influence,neurons \
  --analyze-option head_detectors.seq_len=4 --analyze-option neurons.k=2 --layers 0,1 >/dev/null
"$HL" capture --model "$FIXTURES/tiny-gpt2-a" --prompt-ids 464,3797,3332 --prompt-ids 40,588 --dtype F16 \
  --out "$RUNS/sliced" --hooks "$PATTERNS,blocks.0.hook_resid_post" --layers 0,2 --heads 1,3 --query-range 1: \
  --key-range :3 >/dev/null
"$HL" generate --model "$FIXTURES/tiny-gpt2-a" --prompt-ids 464,3797 --max-new-tokens 3 --dtype F16 \
  --out "$RUNS/generated" --hooks "$PATTERNS" --layers 0,1 >/dev/null
"$HL" generate --model "$FIXTURES/llada-tiny-a" --prompt-ids 5,6,7 --gen-length 4 --steps 4 --block-length 2 \
  --cfg-scale 1.5 --dtype F16 --out "$RUNS/diffusion" --hooks "$PATTERNS" >/dev/null
"$HL" capture --model "$FIXTURES/tiny-neo-a" --prompt-ids 464,3797,3332 --dtype F16 --out "$RUNS/local" \
  --hooks "$PATTERNS" --layers 0,1 >/dev/null
# Two ranks each keeping its part (--local-out: no manifest.json, what `hooklens merge` joins).
HOOKLENS="$HL" scripts/launch.sh 2 capture --model "$FIXTURES/tiny-gpt2-a" --prompt-ids 464,3797 --prompt-ids 40,588,1 \
  --dtype F16 --out "$RUNS/parts" --local-out --hooks 'blocks.0.attn.hook_pattern' >/dev/null

# A run directory as one input: manifest.json, then every other file as a part.
python3 - "$RUNS" "$OUT" "$REPORTS" <<'EOF'
import json, os, sys
runs, out, reports = sys.argv[1:4]

def pack(run, extra=None):
    data = b""
    if os.path.exists(os.path.join(run, "manifest.json")):
        with open(os.path.join(run, "manifest.json"), "rb") as f:
            data = f.read()
    for root, _, files in sorted(os.walk(run)):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), run)
            if rel == "manifest.json" or rel.startswith(("figures", "report")) and not rel.startswith("reports"):
                continue
            with open(os.path.join(root, name), "rb") as f:
                data += b"\n==> " + rel.encode() + b" <==\n" + f.read()
    if extra:
        data += b"\n==> options.json <==\n" + json.dumps(extra).encode()
    return data

def write(directory, name, data):
    assert len(data) < 64 * 1024, (name, len(data))
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)

for run in sorted(os.listdir(runs)):
    write(out, run, pack(os.path.join(runs, run)))
write(out, "generated_options", pack(os.path.join(runs, "generated"), {"heads": [1], "steps": "0,2", "target": 1}))
write(out, "diffusion_options", pack(os.path.join(runs, "diffusion"), {"layers": [1], "steps": [0, 3], "target": 4}))

# The reports alone, for analysis_report (its fixed run has tiny-gpt2-a's 3 layers and 4 heads).
rdir = os.path.join(runs, "analyzed", "reports")
for name in sorted(os.listdir(rdir)):
    with open(os.path.join(rdir, name), "rb") as f:
        write(reports, name[:-5], f.read())
both = b""
for name in ("attention_stats.json", "head_detectors.json"):
    with open(os.path.join(rdir, name), "rb") as f:
        both += (b"\n" if both else b"") + b"==> " + name.encode() + b" <==\n" + f.read()
write(reports, "two_reports", both)

# ---- hand-broken runs: each starts from a real one with one field made hostile.
def manifest(run):
    with open(os.path.join(runs, run, "manifest.json")) as f:
        return json.load(f)

def edited(name, run, change):
    m = manifest(run)
    change(m)
    data = pack(os.path.join(runs, run))
    rest = data[data.index(b"\n==> "):] if b"\n==> " in data else b""
    write(out, name, json.dumps(m, indent=1).encode() + rest)

def broken(name, run, change):
    edited("broken_" + name, run, change)

# A run whose model was changed: every kind of intervention, and an --ablate head of an older run.
def intervene(m):
    site = "blocks.1.attn.hook_z[head=3,pos=2]"
    m["interventions"] = [
        {"kind": "patch", "site": site, "hook": "blocks.1.attn.hook_z", "source": "runs/clean", "applied": 1,
         "text": "patched " + site + " from runs/clean"},
        {"kind": "steer", "site": "blocks.0.hook_resid_post", "hook": "blocks.0.hook_resid_post",
         "source": "vec.safetensors:steering", "scale": 4.0, "applied": 1,
         "text": "steered blocks.0.hook_resid_post by 4 x vec.safetensors:steering"},
        {"kind": "mean_ablate", "site": "blocks.0.hook_mlp_out", "hook": "blocks.0.hook_mlp_out", "source": None,
         "applied": 1, "text": "mean-ablated blocks.0.hook_mlp_out <b>&amp;</b>"},
        {"kind": "resample_ablate", "site": "blocks.1.hook_attn_out", "hook": "blocks.1.hook_attn_out",
         "source": "runs/other", "applied": 0, "text": "resample-ablated blocks.1.hook_attn_out from runs/other"}]
    m["ablations"] = ["0.1", "1.3"]
edited("intervened", "local", intervene)

def broken_part(name, change):
    data = pack(os.path.join(runs, "parts"))
    header = b"==> part-rank00000.json <==\n"
    start = data.index(header) + len(header)
    end = data.index(b"\n==> ", start)
    part = json.loads(data[start:end])
    change(part)
    write(out, "broken_" + name, data[:start] + json.dumps(part).encode() + data[end:])

def world_as_text(p):
    p["distributed"]["world_size"] = "2"
def done_twice(p):
    p["part"]["prompts_done"] = [0, 0, 1]
broken_part("part_world_size", world_as_text)
broken_part("part_done_twice", done_twice)

def negative_offset(m):
    m["captures"][0]["query_offset"] = -3
def short_output(m):
    m["generation"]["output_ids"] = m["generation"]["output_ids"][:2]
def huge_mask(m):
    m["generation"]["mask_id"] = 2**62
def huge_model(m):
    m["model"]["n_layers"] = 1 << 20
    m["model"].pop("layer_attention", None)
def nested(m):
    v = 1
    for _ in range(100):
        v = [v]
    m["prompts"][0]["source"] = v
def step_past(m):
    m["captures"][-1]["step"] = 99
def bad_intervention(m):
    intervene(m)
    del m["interventions"][1]["scale"]
    m["interventions"][2]["applied"] = -1
    m["ablations"] = ["1.x"]
broken("negative_offset", "analyzed", negative_offset)
broken("short_output_ids", "generated", short_output)
broken("huge_mask_id", "diffusion", huge_mask)
broken("huge_model", "analyzed", huge_model)
broken("nested_json", "sliced", nested)
broken("step_past_end", "generated", step_past)
broken("intervention", "local", bad_intervention)

# ---- hand-broken reports.
write(reports, "broken_layer_out_of_range", json.dumps({"heads": [{"layer": 7, "head": 0, "score": 1.0}]}).encode())
write(reports, "broken_not_object", b"[1, 2, 3]")
write(reports, "broken_nested", b'{"heads": [{"layer": 0, "head": 0, "x": ' + b"[" * 100 + b"]" * 100 + b"}]}")
write(reports, "broken_values", json.dumps({"heads": [{"layer": 0, "head": 1, "a": 1e308, "b": -1e308, "c": None,
                                                       "d": True, "e": "text", "f": {"g": 2}}]}).encode())
EOF
ls -l "$OUT" "$REPORTS"
