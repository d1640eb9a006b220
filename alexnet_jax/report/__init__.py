"""What the commands draw and write: charts (matplotlib), image grids (Pillow), and the one writer
of a report's json, md and png. Imports nothing of the project."""
