"""How and where the program runs, below everything else: the backend being traced
for, the numeric precision, the device mesh, the CPU kernels, and how a command
starts (quietly, with huge pages) and fails (one `error:` line)."""
