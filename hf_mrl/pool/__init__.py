"""The pool layer: teacher ids and loading, the teacher, the pool, its output cache, labels, screening, endpoints,
pool selection and the embedded pool's builder. Imports the data layer, never training."""

from hf_mrl.pool.model_pool import ModelPool, Teacher, TeacherLoadError, parse_pool_file, parse_teacher_id

__all__ = ["ModelPool", "Teacher", "TeacherLoadError", "parse_pool_file", "parse_teacher_id"]
