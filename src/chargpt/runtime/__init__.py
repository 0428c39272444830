"""The machine a command runs on: device, compiling, processes, memory and CPUs, progress, signals, helper processes,
.env files."""
