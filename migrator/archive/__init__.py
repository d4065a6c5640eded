"""archive: see DESIGN.md §5."""
