# Rekindle: the two commands a new user runs (as root, on Debian bookworm).
#   make demo   install what is missing, build, and show a function container run
#               through io.containerd.rekindle.v2 on a private containerd
#   make test   the same set-up, then every check: fmt, clippy, docs, unit and
#               integration tests (real containerd 2.x and 1.6, runc, CRIU)
#   make soak   the long soak (10 min of mixed load on one node; summary in
#               bench-results/soak.md); make test runs it for 60 s
.PHONY: demo test setup build soak

demo:
	bash hack/demo.sh

test:
	bash hack/test.sh

soak:
	bash hack/soak.sh

setup:
	bash hack/setup.sh

build:
	cargo build --workspace --release
