"""Runs several argparse commands in one Python process ("cmd1 ... + cmd2 ..."), so a test pays
torch's start-up once."""


def run_chained(argv, parser):
    commands, current = [], []
    for arg in argv:  # "+" separates the commands
        if arg == "+":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    commands.append(current)
    for command in commands:
        args = parser().parse_args(command)
        args.func(args)
