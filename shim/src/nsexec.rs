//! Starting a process inside a running container without runc (the exec of the direct engine).
