"""Teacher-output cache: run a frozen teacher once, distil from its stored logits (``lkd cache-teacher``)."""

from lkd.cache.build import TargetsFn, build_teacher_cache, check_cache_target, check_cacheable
from lkd.cache.store import CacheableData, SplitIdentity, StaleTeacherCacheError, TeacherCache, TeacherCacheError

__all__ = ["CacheableData", "SplitIdentity", "StaleTeacherCacheError", "TargetsFn", "TeacherCache", "TeacherCacheError",
           "build_teacher_cache", "check_cache_target", "check_cacheable"]
