"""The Hub: model cards and their templates, pushing a run folder."""
