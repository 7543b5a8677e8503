//! Work that splits into independent pieces (opening or sealing envelopes: a post-quantum KEM
//! operation and a signature each) spread over the machine's cores.

/// `f` over every item, in order, on as many threads as the machine has cores (up to four,
/// the calling thread among them); fewer than `per_thread` items each stay on the calling
/// thread, where a thread would cost more than it saves. A piece that panics leaves `None` in
/// its place (the others are kept), and a thread the system will not give runs its part on the
/// calling thread.
pub(crate) fn map<T: Sync, R: Send>(
    items: &[T],
    per_thread: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, 4)
        .min(items.len() / per_thread.max(1))
        .max(1);
    let run = |chunk: &[T]| -> Vec<Option<R>> {
        chunk
            .iter()
            .map(|item| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item))).ok())
            .collect()
    };
    if threads == 1 {
        return run(items);
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = items.chunks(chunk);
        let first = parts.next().unwrap_or_default();
        let others: Vec<_> = parts
            .map(|part| {
                let spawned = std::thread::Builder::new()
                    .name("qpq-sdk-crypto".into())
                    .spawn_scoped(scope, move || run(part));
                (part, spawned)
            })
            .collect();
        let mut all = run(first);
        for (part, spawned) in others {
            match spawned.map(|handle| handle.join()) {
                Ok(Ok(done)) => all.extend(done),
                // No thread to be had: this part runs here.
                Err(_) => all.extend(run(part)),
                // Never (every piece is caught), kept total.
                Ok(Err(_)) => all.extend(std::iter::repeat_with(|| None).take(part.len())),
            }
        }
        all
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_item_is_mapped_once_in_order_whatever_the_split() {
        for n in [0usize, 1, 7, 8, 9, 31, 100, 257] {
            let items: Vec<usize> = (0..n).collect();
            let calls = std::sync::atomic::AtomicUsize::new(0);
            let out = super::map(&items, 8, |i| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i * 2
            });
            assert_eq!(
                out,
                items.iter().map(|i| Some(i * 2)).collect::<Vec<_>>(),
                "{n}"
            );
            assert_eq!(calls.into_inner(), n);
        }
    }

    #[test]
    fn a_piece_that_panics_leaves_none_and_the_rest_is_kept() {
        let items: Vec<usize> = (0..64).collect();
        // One piece fails on the calling thread's part, one on another thread's.
        let out = super::map(&items, 8, |i| {
            assert!(*i != 0 && *i != 62, "this piece fails");
            *i
        });
        assert_eq!(out.len(), 64);
        assert_eq!(out[0], None);
        assert_eq!(out[1], Some(1));
        assert_eq!(out[62], None);
        assert_eq!(out[63], Some(63));
    }
}
