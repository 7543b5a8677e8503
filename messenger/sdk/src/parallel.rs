//! Work that splits into independent pieces (opening or sealing envelopes: a post-quantum KEM
//! operation and a signature each) spread over the machine's cores.

/// `f` over every item, in order, on as many threads as the machine has cores (up to four,
/// the calling thread among them); fewer than `per_thread` items each stay on the calling
/// thread, where a thread would cost more than it saves. A piece that panics leaves `None`
/// in its place and in the places after it on the same thread.
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
    let run = |chunk: &[T]| -> Vec<Option<R>> { chunk.iter().map(|item| Some(f(item))).collect() };
    if threads == 1 {
        return run(items);
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = items.chunks(chunk);
        let first = parts.next().unwrap_or_default();
        let others: Vec<_> = parts
            .map(|part| (part.len(), scope.spawn(move || run(part))))
            .collect();
        let mut all = run(first);
        for (len, other) in others {
            match other.join() {
                Ok(done) => all.extend(done),
                Err(_) => all.extend(std::iter::repeat_with(|| None).take(len)),
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
        let out = super::map(&items, 8, |i| {
            assert!(*i != 63, "the last piece fails");
            *i
        });
        assert_eq!(out.len(), 64);
        assert_eq!(out[0], Some(0));
        assert_eq!(out[63], None);
    }
}
