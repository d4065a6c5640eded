"""storage: see DESIGN.md §5."""
