"""The machine a command runs on: device, processes, memory, progress, signals, helper processes, .env files."""
