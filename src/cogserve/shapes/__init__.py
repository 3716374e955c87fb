"""The shapes world the built-in model draws: palette, shapes, sizes, positions, captions, a judge."""
