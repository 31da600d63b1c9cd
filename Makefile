# Rekindle: the two commands a new user runs (as root, on Debian bookworm).
#   make demo   install what is missing, build, and show a function container run
#               through io.containerd.rekindle.v2 on a private containerd
#   make test   the same set-up, then every check: fmt, clippy, unit and
#               integration tests (real containerd 2.x and 1.6, runc, CRIU)
.PHONY: demo test setup build

demo:
	bash hack/demo.sh

test:
	bash hack/test.sh

setup:
	bash hack/setup.sh

build:
	cargo build --workspace --release
