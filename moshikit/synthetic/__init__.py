"""Synthetic checkpoints users run (``--model synthetic``, ``bench --synthetic``): generated weights in
the published layouts, tiny or at full size. Valid for speed and mechanics, never for quality."""
