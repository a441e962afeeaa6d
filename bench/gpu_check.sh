#!/bin/sh
# Thin wrapper: bench/gpu_check.py with python3 (see its docstring for the device command).
exec python3 "$(dirname "$0")/gpu_check.py" "$@"
