"""Teacher-output cache: run a frozen teacher once, distil from its stored logits (``lkd cache-teacher``)."""

from lkd.cache.build import attach_teacher_cache, build_teacher_cache
from lkd.cache.store import SplitIdentity, StaleTeacherCacheError, TeacherCache, TeacherCacheError

__all__ = ["SplitIdentity", "StaleTeacherCacheError", "TeacherCache", "TeacherCacheError", "attach_teacher_cache",
           "build_teacher_cache"]
