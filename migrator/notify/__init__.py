"""notify: see DESIGN.md §5."""
