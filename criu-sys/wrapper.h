/* What bindgen reads: libcriu's public header (see build.rs for where it is found). */
#include <stdbool.h>
#include <stddef.h>
#include "criu.h"
