"""remote: see DESIGN.md §5."""
