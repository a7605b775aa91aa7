"""Per-pool verdicts on model rounds: round win rates and the Bradley–Terry leaderboard with
bootstrap intervals over prompts, overall and per pool (``verdicts``), and the rounds page."""
