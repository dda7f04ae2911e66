"""Command-line entry points: thin absl apps over the library (flags -> Recipe -> call)."""
