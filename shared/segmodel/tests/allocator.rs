//! The purge delay segmodel gives mimalloc (its own process: the test reads mimalloc's
//! default before anything sets it).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `MI_OPTION_PURGE_DELAY` is mimalloc's purge delay (it reads mimalloc v3's documented
/// default of 1000 ms), `init_compute_threads` raises it to `PURGE_DELAY_MS`, and a
/// `MIMALLOC_PURGE_DELAY` set by the user is left alone.
#[test]
fn compute_setup_keeps_freed_pages_longer_unless_the_user_set_the_delay() {
    let before = segmodel::purge_delay_ms();
    match std::env::var(segmodel::setup::PURGE_DELAY_ENV) {
        Ok(v) => {
            // The user's value stays.
            segmodel::init_compute_threads();
            assert_eq!(segmodel::purge_delay_ms(), before, "{v}");
        }
        Err(_) => {
            assert_eq!(before, 1000, "mimalloc's default purge delay");
            segmodel::init_compute_threads();
            assert_eq!(segmodel::purge_delay_ms(), segmodel::setup::PURGE_DELAY_MS);
        }
    }
}
