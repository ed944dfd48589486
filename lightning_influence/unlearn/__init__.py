"""The unlearning pipeline: settings, tasks, selection, rounds, step search, response descent."""
