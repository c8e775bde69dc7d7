"""Jinja templates of the reuser and student model cards."""
