"""Interventions inside the models (the `intervention` config group): what changes in the LLM's attention while the
model runs, composable with any token-routing strategy."""
