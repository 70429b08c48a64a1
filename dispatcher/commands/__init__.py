"""The CLI's command groups; `dispatcher.cli` assembles them into one app."""
