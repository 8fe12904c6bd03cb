"""User tools with entry points: embed a project or folder, bulk pre-label from a search, print a report."""
