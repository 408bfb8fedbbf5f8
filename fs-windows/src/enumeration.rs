//! Directory enumeration sessions.
//!
//! ProjFS enumerates a directory in a session named by a GUID: a start
//! callback, one or more get callbacks that each fill a buffer of limited
//! size, and an end callback. The provider must
//!
//! - fill entries in `PrjFileNameCompare` order (the [`Listing`] order);
//! - capture the search expression on the first get callback, and again
//!   whenever the restart-scan flag is set, and use the captured one
//!   otherwise (a missing or empty expression matches everything);
//! - when the buffer fills up, resume the next call at the entry that did
//!   not fit, and return "insufficient buffer" if not even the first one did;
//! - restart from the first entry on restart-scan.
//!
//! [`Session`] is that state machine; [`Sessions`] keeps one per enumeration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::projection::{DirEntry, Listing};
use crate::wildcard::Pattern;

/// Whether an entry went into the enumeration buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// It was added.
    Added,
    /// The buffer is full; the entry was not added.
    Full,
}

/// The outcome of one get-enumeration callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// This many entries were added (0: the enumeration is complete).
    Filled(usize),
    /// Entries remain but not even the first fit: answer
    /// `ERROR_INSUFFICIENT_BUFFER`.
    TooSmall,
}

/// The state of one enumeration of one directory.
#[derive(Debug)]
pub struct Session {
    listing: Arc<Listing>,
    pattern: Option<Pattern>,
    cursor: usize,
}

impl Session {
    /// A session over a directory's listing, before its first get callback.
    pub fn new(listing: Arc<Listing>) -> Self {
        Session {
            listing,
            pattern: None,
            cursor: 0,
        }
    }

    /// Serves one get-enumeration callback: `search` is the callback's
    /// search expression, `restart` its restart-scan flag, and `fill`
    /// offers one entry to the buffer.
    pub fn next_batch(
        &mut self,
        search: Option<&str>,
        restart: bool,
        mut fill: impl FnMut(&DirEntry) -> Fill,
    ) -> Batch {
        if restart || self.pattern.is_none() {
            self.pattern = Some(match search {
                Some(expr) if !expr.is_empty() => Pattern::new(expr),
                _ => Pattern::all(),
            });
        }
        if restart {
            self.cursor = 0;
        }
        let Some(pattern) = &self.pattern else {
            return Batch::Filled(0);
        };
        let mut added = 0;
        while let Some(entry) = self.listing.entries().get(self.cursor) {
            if pattern.matches_key(&entry.key) {
                if fill(entry) == Fill::Full {
                    return if added == 0 {
                        Batch::TooSmall
                    } else {
                        Batch::Filled(added)
                    };
                }
                added += 1;
            }
            self.cursor += 1;
        }
        Batch::Filled(added)
    }
}

/// The open enumeration sessions, by enumeration GUID. Each session has
/// its own lock, so concurrent enumerations only share the map's, and only
/// to find their session.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<u128, Arc<Mutex<Session>>>>,
}

impl Sessions {
    /// Opens session `id` over `listing` (start-enumeration callback).
    pub fn start(&self, id: u128, listing: Arc<Listing>) {
        let session = Arc::new(Mutex::new(Session::new(listing)));
        if let Ok(mut map) = self.map.lock() {
            map.insert(id, session);
        }
    }

    /// Session `id`, if it is open.
    pub fn get(&self, id: u128) -> Option<Arc<Mutex<Session>>> {
        self.map.lock().ok()?.get(&id).cloned()
    }

    /// Closes session `id` (end-enumeration callback); whether it was open.
    pub fn end(&self, id: u128) -> bool {
        self.map
            .lock()
            .is_ok_and(|mut map| map.remove(&id).is_some())
    }

    /// The number of open sessions.
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |map| map.len())
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use ocifs_core::Tree;

    use super::*;
    use crate::projection::Projection;
    use crate::testutil;

    fn listing(names: &[&str]) -> Arc<Listing> {
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (*n, &b"x"[..])).collect();
        let p = Projection::new(testutil::tree(&files));
        p.listing(Tree::ROOT).cloned().unwrap()
    }

    /// A buffer that holds `room` entries, then is full.
    fn buffer(room: usize, out: &mut Vec<String>) -> impl FnMut(&DirEntry) -> Fill + '_ {
        move |e| {
            if out.len() >= room {
                Fill::Full
            } else {
                out.push(e.name.clone());
                Fill::Added
            }
        }
    }

    #[test]
    fn enumerates_everything_in_order_when_it_fits() {
        let mut s = Session::new(listing(&["b", "A", "c"]));
        let mut got = Vec::new();
        assert_eq!(
            s.next_batch(None, false, buffer(10, &mut got)),
            Batch::Filled(3)
        );
        assert_eq!(got, vec!["A", "b", "c"]);
        // The next call finds nothing left: the enumeration is complete.
        assert_eq!(
            s.next_batch(None, false, buffer(10, &mut got)),
            Batch::Filled(0)
        );
    }

    #[test]
    fn resumes_at_the_entry_that_did_not_fit() {
        let mut s = Session::new(listing(&["a", "b", "c", "d", "e"]));
        let mut all = Vec::new();
        for expected in [2, 2, 1, 0] {
            let mut got = Vec::new();
            assert_eq!(
                s.next_batch(None, false, buffer(2, &mut got)),
                Batch::Filled(expected)
            );
            all.extend(got);
        }
        assert_eq!(all, vec!["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn a_buffer_too_small_for_one_entry_is_reported_and_nothing_is_lost() {
        let mut s = Session::new(listing(&["a", "b"]));
        let mut got = Vec::new();
        assert_eq!(
            s.next_batch(None, false, buffer(0, &mut got)),
            Batch::TooSmall
        );
        assert_eq!(
            s.next_batch(None, false, buffer(5, &mut got)),
            Batch::Filled(2)
        );
        assert_eq!(got, vec!["a", "b"]);
    }

    #[test]
    fn the_search_expression_is_captured_on_the_first_call() {
        let mut s = Session::new(listing(&["a.txt", "b.log", "c.TXT", "d.txt"]));
        let mut got = Vec::new();
        assert_eq!(
            s.next_batch(Some("*.txt"), false, buffer(1, &mut got)),
            Batch::Filled(1)
        );
        // Later calls may pass another expression (or none); the captured one holds.
        assert_eq!(
            s.next_batch(Some("*.log"), false, buffer(10, &mut got)),
            Batch::Filled(2)
        );
        assert_eq!(got, vec!["a.txt", "c.TXT", "d.txt"]);
    }

    #[test]
    fn restart_scan_starts_over_with_the_new_expression() {
        let mut s = Session::new(listing(&["a.txt", "b.log", "c.txt"]));
        let mut got = Vec::new();
        s.next_batch(Some("*.txt"), false, buffer(1, &mut got));
        assert_eq!(got, vec!["a.txt"]);
        let mut again = Vec::new();
        assert_eq!(
            s.next_batch(Some("*.log"), true, buffer(10, &mut again)),
            Batch::Filled(1)
        );
        assert_eq!(again, vec!["b.log"]);
        let mut all = Vec::new();
        assert_eq!(
            s.next_batch(None, true, buffer(10, &mut all)),
            Batch::Filled(3)
        );
    }

    #[test]
    fn no_expression_or_an_empty_one_matches_everything() {
        for search in [None, Some("")] {
            let mut s = Session::new(listing(&["x", "y.z"]));
            let mut got = Vec::new();
            assert_eq!(
                s.next_batch(search, false, buffer(10, &mut got)),
                Batch::Filled(2)
            );
        }
    }

    #[test]
    fn a_name_without_wildcards_finds_one_entry_in_any_case() {
        let mut s = Session::new(listing(&["Kernel", "initrd"]));
        let mut got = Vec::new();
        assert_eq!(
            s.next_batch(Some("KERNEL"), false, buffer(10, &mut got)),
            Batch::Filled(1)
        );
        assert_eq!(got, vec!["Kernel"]);
    }

    #[test]
    fn an_empty_directory_is_complete_at_once() {
        let mut s = Session::new(Arc::new(Listing::default()));
        let mut got = Vec::new();
        assert_eq!(
            s.next_batch(Some("*"), false, buffer(0, &mut got)),
            Batch::Filled(0)
        );
    }

    #[test]
    fn sessions_are_kept_apart_by_id() {
        let sessions = Sessions::default();
        sessions.start(1, listing(&["a", "b"]));
        sessions.start(2, listing(&["a", "b"]));
        let mut first = Vec::new();
        sessions
            .get(1)
            .unwrap()
            .lock()
            .unwrap()
            .next_batch(None, false, buffer(1, &mut first));
        let mut second = Vec::new();
        sessions
            .get(2)
            .unwrap()
            .lock()
            .unwrap()
            .next_batch(None, false, buffer(10, &mut second));
        assert_eq!((first.len(), second.len()), (1, 2));
        assert_eq!(sessions.len(), 2);
        assert!(sessions.end(1));
        assert!(!sessions.end(1));
        assert!(sessions.get(1).is_none());
        assert!(sessions.end(2));
        assert!(sessions.is_empty());
    }
}
