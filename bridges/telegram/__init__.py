"""The Telegram bridge: Telegram chats in, codex-hub runs out, answers back as replies.

Built on python-telegram-bot's ``Application`` with long polling. ``settings.py`` reads
the ``TELEGRAM_*`` variables; ``convert.py`` holds every Telegram quirk as pure
functions (who may talk to the bot, which group messages are addressed to it, how an
answer is split and formatted) so tests call them directly.
"""
