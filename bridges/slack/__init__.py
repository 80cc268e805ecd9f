"""Slack bridge: mentions and DMs in, answers back in the thread."""
