"""Runtimes host the roles (generators, buffer, learner). ``local``: one machine."""
