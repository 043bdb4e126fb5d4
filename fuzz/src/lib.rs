//! Shared by the fuzz targets: writing seed inputs made by the real encoders.
//!
//! Some seeds cannot be written by hand (a MessagePack `Record` as tower-sessions stores it, a
//! token signed by the real `AssertionSigner`): a target that needs them makes them at start-up
//! and, when `FUZZ_WRITE_SEEDS=<dir>` is set, writes them there (`fuzz/run.sh --seeds` uses this
//! to refresh `fuzz/corpus-seeds/`).

use std::path::Path;

/// Writes `seeds` (file name, bytes) into `$FUZZ_WRITE_SEEDS/<target>/` if that is set.
pub fn write_seeds_if_asked(target: &str, seeds: impl FnOnce() -> Vec<(String, Vec<u8>)>) {
    let Some(dir) = std::env::var_os("FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = Path::new(&dir).join(target);
    std::fs::create_dir_all(&dir).expect("seed directory");
    for (name, bytes) in seeds() {
        std::fs::write(dir.join(name), bytes).expect("seed file");
    }
}
