"""What the command packages share: context, output, intents, placement verdicts and the
migration runner. No command package imports another; they all import from here."""
