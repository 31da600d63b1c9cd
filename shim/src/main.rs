use rekindle_shim::RUNTIME_TYPE;

const HELP: &str = "\
containerd-shim-rekindle-v2 — the Rekindle containerd shim (runtime type io.containerd.rekindle.v2)

containerd starts this binary itself; you do not run it by hand. It runs each
container through runc (a containerd shim v2 over ttrpc: create, start, exec,
kill, pause/resume, stats, delete) and publishes task events to containerd.

Use it from containerd:
  ctr run --runtime io.containerd.rekindle.v2 IMAGE ID
  or a Kubernetes RuntimeClass with handler `rekindle` (see the README for the
  containerd config snippet for 1.x and 2.x).

Runtime options (containerd.runc.v1.Options): BinaryName (default `runc` on PATH),
Root (default /run/containerd/runc), SystemdCgroup, IoUid/IoGid, NoPivotRoot.

Flags containerd passes: -namespace, -id, -address, -publish-binary, -socket,
-bundle, -debug, and the action `start` | `delete`.
  -v, --version   print the version and exit
  -h, --help      print this help and exit

Internal: `nsexec REQUEST.json` is the helper the shim runs itself to exec into
a container of the direct engine; do not run it by hand.
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The exec helper must stay single-threaded (setns into a mount or user
    // namespace refuses multi-threaded callers): dispatch it before tokio.
    if args.first().map(String::as_str) == Some(rekindle_shim::nsexec::SUBCOMMAND) {
        std::process::exit(rekindle_shim::nsexec::main(&args[1..]));
    }
    if args
        .iter()
        .any(|a| a == "-v" || a == "--version" || a == "-version")
    {
        println!(
            "containerd-shim-rekindle-v2 {} (runtime {RUNTIME_TYPE})",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    if args
        .iter()
        .any(|a| a == "-h" || a == "--help" || a == "-help")
    {
        print!("{HELP}");
        return;
    }
    if let Err(e) = rekindle_shim::bootstrap::main() {
        eprintln!("containerd-shim-rekindle-v2: {e}");
        std::process::exit(1);
    }
}
