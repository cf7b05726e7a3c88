"""The launchers' skeleton: checking a config, --help and errors (cli), opening the run and waiting
for the stage's processes (stage), and starting and stopping them (processes)."""
