//! Process-wide memory settings for the binaries that use mimalloc (the
//! `crossflow` binary and the benchmark, which must match it).

/// Turns transparent huge pages off for this process, before it allocates
/// much.
///
/// mimalloc asks the kernel for huge pages on its arenas (`madvise`), and
/// each first touch of a 2 MiB region is a fault that zeroes all of it.
/// Under sustained ReportConversion load the runtime and the store writer
/// keep moving on to fresh regions, and the resident set kept growing: 115
/// MiB after 3 s, 350 MiB after 42 s (about a million reports) of one
/// benchmark run, still rising at the end, against a live heap that peaked
/// at 12 MiB (glibc's allocator under heaptrack). With huge pages off the
/// same run went from 32 to 56 MiB, and `clear_page_erms` (the zeroing,
/// 2.1 % of all CPU samples) left the profile. docs/BENCHMARKS.md has the
/// runs.
///
/// `prctl(PR_SET_THP_DISABLE)` applies to every fault from now on, huge
/// pages the system would give unasked (THP "always") included. It runs
/// before logging is set up; a failure (a kernel older than 3.15) only
/// costs memory, so it is ignored. Other systems keep their defaults.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}
