//! The unsynced state of one file: what was written or truncated through the
//! mount since the file was last fsynced. It knows nothing about FUSE, so it
//! can be tested against a plain byte vector.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// What an [`Overlay`] needs from the file underneath it.
pub trait Backing {
    /// The current size of the backing file in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads at `offset`, like `pread(2)`: may return fewer bytes, 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends (with zeros) to exactly `size` bytes.
    fn set_size(&mut self, size: u64) -> io::Result<()>;
}

impl Backing for &File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(*self, buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(*self, buf, offset)
    }
    fn set_size(&mut self, size: u64) -> io::Result<()> {
        self.set_len(size)
    }
}

/// A write or truncate whose end does not fit in a file offset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a change at offset {offset} of {len} bytes ends past the largest file offset")]
pub struct TooLarge {
    pub offset: u64,
    pub len: u64,
}

/// Unsynced changes to one file, laid over its backing file.
///
/// The logical content of the file is: the backing file, cut at `cut` (bytes
/// at or past it were truncated away and read as zeros), then the extents on
/// top, the whole thing `size` bytes long.
///
/// Some extent bytes may be *lost*: a failed fsync tried to write them back
/// and could not. Like the pages Linux marks clean after a failed writeback,
/// they still read back as written, but no later fsync writes them, and a
/// power loss drops them. Writing them again makes them ordinary unsynced
/// data.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The logical size, when it is not simply the backing file's size.
    size: Option<u64>,
    /// The smallest size the file was truncated to since the last sync, if
    /// that cut into the backing file.
    cut: Option<u64>,
    /// Written ranges by start offset. They never overlap and are never empty.
    extents: BTreeMap<u64, Vec<u8>>,
    /// The total length of `extents`, kept so that callers can bound memory
    /// without walking every extent.
    bytes: u64,
    /// Lost ranges, start → end: always inside `extents`, never overlapping,
    /// never empty, never adjacent.
    lost: BTreeMap<u64, u64>,
}

impl Overlay {
    /// True when the file has no unsynced change.
    pub fn is_clean(&self) -> bool {
        self.size.is_none() && self.cut.is_none() && self.extents.is_empty()
    }

    /// Bytes of written data that a power loss would drop now (lost bytes
    /// included).
    pub fn unsynced_bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes that a failed fsync could not write back and no later fsync
    /// will.
    pub fn lost_bytes(&self) -> u64 {
        self.lost.iter().map(|(start, end)| end - start).sum()
    }

    /// The size the file has through the mount.
    pub fn size(&self, backing_size: u64) -> u64 {
        self.size.unwrap_or(backing_size)
    }

    pub fn write(&mut self, offset: u64, data: &[u8], backing_size: u64) -> Result<(), TooLarge> {
        let len = data.len() as u64;
        let end = offset.checked_add(len).ok_or(TooLarge { offset, len })?;
        if data.is_empty() {
            return Ok(());
        }
        let size = self.size(backing_size);
        self.remove_range(offset, end);
        // Appends grow the previous extent in place, so a log written in many
        // small appends stays one allocation instead of one per write.
        let mut start = offset;
        let mut merged = match self.extents.range_mut(..offset).next_back() {
            Some((&prev_start, prev)) if prev_start + prev.len() as u64 == offset => {
                start = prev_start;
                let mut prev = std::mem::take(prev);
                prev.extend_from_slice(data);
                prev
            }
            _ => data.to_vec(),
        };
        if let Some(next) = self.extents.remove(&end) {
            merged.extend_from_slice(&next);
        }
        self.extents.insert(start, merged);
        self.bytes += len;
        self.size = Some(size.max(end));
        Ok(())
    }

    /// Sets the logical size, as `truncate(2)` does: shrinking drops data
    /// past `new_size`, growing reads back as zeros.
    pub fn truncate(&mut self, new_size: u64, backing_size: u64) {
        if new_size < self.size(backing_size) {
            self.remove_range(new_size, u64::MAX);
            if new_size < backing_size {
                self.cut = Some(self.cut.map_or(new_size, |cut| cut.min(new_size)));
            }
        }
        self.size = Some(new_size);
        if self.cut.is_none() && self.extents.is_empty() && new_size == backing_size {
            self.size = None;
        }
    }

    /// Reads up to `len` bytes at `offset` as the mount shows them; shorter
    /// at the end of the file, like `pread(2)`.
    pub fn read(&self, offset: u64, len: u32, backing: &impl Backing) -> io::Result<Vec<u8>> {
        let backing_size = backing.size()?;
        let size = self.size(backing_size);
        if offset >= size {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(u64::from(len)).min(size);
        let mut buf = vec![0u8; to_usize(end - offset)?];
        let backing_end = end.min(backing_size).min(self.cut.unwrap_or(u64::MAX));
        if backing_end > offset {
            read_full(backing, &mut buf[..to_usize(backing_end - offset)?], offset)?;
        }
        for (&start, data) in self.overlapping(offset, end) {
            let from = start.max(offset);
            let to = (start + data.len() as u64).min(end);
            buf[to_usize(from - offset)?..to_usize(to - offset)?]
                .copy_from_slice(&data[to_usize(from - start)?..to_usize(to - start)?]);
        }
        Ok(buf)
    }

    /// Makes the backing file hold what the mount shows, except for lost
    /// bytes: there the backing file keeps what it had (zeros past its old
    /// end). The overlay stays as it is; once the backing file is synced the
    /// caller replaces it with [`Overlay::synced`].
    pub fn apply(&self, backing: &mut impl Backing) -> io::Result<()> {
        if let Some(cut) = self.cut {
            backing.set_size(cut)?;
        }
        for (&start, data) in &self.extents {
            let end = start + data.len() as u64;
            let mut at = start;
            for (lost_start, lost_end) in self.lost_within(start, end) {
                if lost_start > at {
                    backing.write_all_at(&data[slice(start, at, lost_start)?], at)?;
                }
                at = lost_end;
            }
            if at < end {
                backing.write_all_at(&data[slice(start, at, end)?], at)?;
            }
        }
        if let Some(size) = self.size {
            backing.set_size(size)?;
        }
        Ok(())
    }

    /// What remains unsynced once [`Overlay::apply`] reached the disk and was
    /// synced: only the lost bytes, still readable through the mount.
    pub fn synced(&self) -> Overlay {
        let mut rest = Overlay::default();
        for (&start, &end) in &self.lost {
            for (&extent_start, data) in self.overlapping(start, end) {
                let from = start.max(extent_start);
                let to = end.min(extent_start + data.len() as u64);
                let Ok(range) = slice(extent_start, from, to) else {
                    continue;
                };
                rest.extents.insert(from, data[range].to_vec());
                rest.bytes += to - from;
            }
        }
        rest.lost = self.lost.clone();
        rest
    }

    /// A failed fsync: every unsynced byte written so far becomes lost. Size
    /// changes stay pending, and the next successful fsync makes them
    /// durable.
    pub fn fail_sync(&mut self) {
        let ranges: Vec<(u64, u64)> = self
            .extents
            .iter()
            .map(|(&start, data)| (start, start + data.len() as u64))
            .collect();
        for (start, end) in ranges {
            insert_range(&mut self.lost, start, end);
        }
    }

    /// The part of the file that a torn write can leave behind: the bytes the
    /// mount shows past the end of the backing file, as (offset, bytes), up
    /// to the first lost byte (a failed writeback never reaches the disk).
    /// `None` when the file does not extend its backing file, or was cut
    /// below it since its last sync (a truncated file is not a torn append).
    pub fn tearable_tail(&self, backing: &impl Backing) -> io::Result<Option<(u64, Vec<u8>)>> {
        if self.cut.is_some() {
            return Ok(None);
        }
        let backing_size = backing.size()?;
        let mut end = self.size(backing_size);
        if end <= backing_size {
            return Ok(None);
        }
        if let Some((start, _)) = self.lost_within(backing_size, end).next() {
            end = start.max(backing_size);
        }
        let mut tail = Vec::with_capacity(to_usize(end - backing_size)?);
        let mut at = backing_size;
        while at < end {
            let len = u32::try_from(end - at).unwrap_or(u32::MAX);
            let chunk = self.read(at, len, backing)?;
            if chunk.is_empty() {
                break;
            }
            at += chunk.len() as u64;
            tail.extend_from_slice(&chunk);
        }
        Ok(Some((backing_size, tail)))
    }

    /// The lost ranges that overlap `[start, end)`, clipped to it, in order.
    fn lost_within(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let before = self
            .lost
            .range(..start)
            .next_back()
            .filter(|(_, e)| **e > start);
        before
            .into_iter()
            .chain(self.lost.range(start..end))
            .map(move |(&s, &e)| (s.max(start), e.min(end)))
    }

    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (&u64, &Vec<u8>)> {
        let before = self
            .extents
            .range(..start)
            .next_back()
            .filter(|(s, data)| **s + data.len() as u64 > start);
        before.into_iter().chain(self.extents.range(start..end))
    }

    /// Removes `[start, end)` from the extents, keeping the parts of extents
    /// that stick out on either side. Lost bytes in the range are no longer
    /// lost: they are overwritten or truncated away.
    fn remove_range(&mut self, start: u64, end: u64) {
        remove_range(&mut self.lost, start, end);
        let hit: Vec<u64> = self.overlapping(start, end).map(|(s, _)| *s).collect();
        for s in hit {
            let Some(data) = self.extents.remove(&s) else {
                continue;
            };
            let data_end = s + data.len() as u64;
            self.bytes -= data_end.min(end) - s.max(start);
            if data_end > end {
                self.extents
                    .insert(end, data[(end - s) as usize..].to_vec());
            }
            if s < start {
                let mut head = data;
                head.truncate((start - s) as usize);
                self.extents.insert(s, head);
            }
        }
    }
}

/// Adds `[start, end)` to a set of disjoint ranges, merging what it touches.
fn insert_range(ranges: &mut BTreeMap<u64, u64>, mut start: u64, mut end: u64) {
    if start >= end {
        return;
    }
    if let Some((&s, &e)) = ranges.range(..=start).next_back()
        && e >= start
    {
        start = s;
        end = end.max(e);
        ranges.remove(&s);
    }
    let touched: Vec<(u64, u64)> = ranges.range(start..=end).map(|(&s, &e)| (s, e)).collect();
    for (s, e) in touched {
        end = end.max(e);
        ranges.remove(&s);
    }
    ranges.insert(start, end);
}

/// Removes `[start, end)` from a set of disjoint ranges, keeping what sticks
/// out on either side.
fn remove_range(ranges: &mut BTreeMap<u64, u64>, start: u64, end: u64) {
    if start >= end {
        return;
    }
    let mut hit: Vec<(u64, u64)> = ranges
        .range(..start)
        .next_back()
        .filter(|(_, e)| **e > start)
        .map(|(&s, &e)| (s, e))
        .into_iter()
        .collect();
    hit.extend(ranges.range(start..end).map(|(&s, &e)| (s, e)));
    for (s, e) in hit {
        ranges.remove(&s);
        if s < start {
            ranges.insert(s, start);
        }
        if e > end {
            ranges.insert(end, e);
        }
    }
}

/// The index range of `[from, to)` in an extent that starts at `start`.
fn slice(start: u64, from: u64, to: u64) -> io::Result<std::ops::Range<usize>> {
    Ok(to_usize(from - start)?..to_usize(to - start)?)
}

fn to_usize(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))
}

/// Fills `buf` from the backing file; a backing file shorter than expected
/// leaves zeros, which is what a hole or a truncated tail reads as.
fn read_full(backing: &impl Backing, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match backing.read_at(buf, offset) {
            Ok(0) => break,
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A backing "file" in memory.
    #[derive(Debug, Clone, Default, PartialEq)]
    struct Mem(Vec<u8>);

    impl Backing for Mem {
        fn size(&self) -> io::Result<u64> {
            Ok(self.0.len() as u64)
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let offset = offset as usize;
            if offset >= self.0.len() {
                return Ok(0);
            }
            let n = buf.len().min(self.0.len() - offset);
            buf[..n].copy_from_slice(&self.0[offset..offset + n]);
            Ok(n)
        }
        fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            let end = offset as usize + buf.len();
            if self.0.len() < end {
                self.0.resize(end, 0);
            }
            self.0[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
        fn set_size(&mut self, size: u64) -> io::Result<()> {
            self.0.resize(size as usize, 0);
            Ok(())
        }
    }

    fn all(overlay: &Overlay, backing: &Mem) -> Vec<u8> {
        overlay.read(0, u32::MAX, backing).unwrap()
    }

    fn write(overlay: &mut Overlay, backing: &Mem, offset: u64, data: &[u8]) {
        overlay.write(offset, data, backing.0.len() as u64).unwrap();
    }

    /// A successful fsync: the overlay's bytes reach the disk, and only
    /// the lost ones stay in the overlay.
    fn sync(overlay: &mut Overlay, backing: &mut Mem) {
        overlay.apply(backing).unwrap();
        *overlay = overlay.synced();
    }

    /// Makes `writes` (offset, bytes), in order, over a file holding
    /// `on_disk`: the file then reads `shown`, with `unsynced` bytes in
    /// the overlay and the backing file untouched.
    fn assert_writes_show(on_disk: &[u8], writes: &[(u64, &[u8])], shown: &[u8], unsynced: u64) {
        let backing = Mem(on_disk.to_vec());
        let mut o = Overlay::default();
        for (offset, data) in writes {
            write(&mut o, &backing, *offset, data);
        }
        assert_eq!(all(&o, &backing), shown);
        assert_eq!(o.unsynced_bytes(), unsynced);
        assert_eq!(backing.0, on_disk, "the backing file is untouched");
    }

    #[test]
    fn overlapping_writes_keep_the_latest_bytes() {
        let writes: [(u64, &[u8]); 4] = [(2, b"aaaa"), (4, b"bb"), (1, b"c"), (5, b"dddd")];
        assert_writes_show(b"0123456789", &writes, b"0caabdddd9", 8);
    }

    #[test]
    fn a_write_covering_several_extents_replaces_them() {
        let writes: [(u64, &[u8]); 4] = [(0, b"aa"), (4, b"bb"), (8, b"cc"), (1, b"XXXXXXXX")];
        assert_writes_show(b"", &writes, b"aXXXXXXXXc", 10);
    }

    #[test]
    fn appends_merge_into_one_extent() {
        let backing = Mem(b"log:".to_vec());
        let mut o = Overlay::default();
        for chunk in [b"a".as_slice(), b"bc", b"def"] {
            let end = o.size(4);
            write(&mut o, &backing, end, chunk);
        }
        assert_eq!(o.extents.len(), 1);
        assert_eq!(all(&o, &backing), b"log:abcdef");
    }

    #[test]
    fn reads_mix_synced_and_unsynced_ranges() {
        let backing = Mem(b"abcdefghij".to_vec());
        let mut o = Overlay::default();
        write(&mut o, &backing, 3, b"XY");
        assert_eq!(o.read(1, 3, &backing).unwrap(), b"bcX");
        assert_eq!(o.read(4, 3, &backing).unwrap(), b"Yfg");
        assert_eq!(o.read(8, 100, &backing).unwrap(), b"ij");
        assert_eq!(o.read(10, 5, &backing).unwrap(), b"");
    }

    #[test]
    fn a_write_past_the_end_leaves_a_hole_of_zeros() {
        let backing = Mem(b"ab".to_vec());
        let mut o = Overlay::default();
        write(&mut o, &backing, 5, b"z");
        assert_eq!(all(&o, &backing), b"ab\0\0\0z");
    }

    #[test]
    fn truncate_then_extend_reads_zeros_not_the_old_backing_bytes() {
        let backing = Mem(b"abcdefgh".to_vec());
        let mut o = Overlay::default();
        o.truncate(3, 8);
        assert_eq!(all(&o, &backing), b"abc");
        o.truncate(6, 8);
        assert_eq!(all(&o, &backing), b"abc\0\0\0");
        write(&mut o, &backing, 4, b"Z");
        assert_eq!(all(&o, &backing), b"abc\0Z\0");
    }

    #[test]
    fn truncate_drops_unsynced_data_past_the_new_end() {
        let backing = Mem::default();
        let mut o = Overlay::default();
        write(&mut o, &backing, 0, b"abcdef");
        o.truncate(2, 0);
        o.truncate(4, 0);
        assert_eq!(all(&o, &backing), b"ab\0\0");
        assert_eq!(o.unsynced_bytes(), 2);
    }

    #[test]
    fn truncating_to_the_backing_size_is_no_change() {
        let mut o = Overlay::default();
        o.truncate(0, 0);
        assert!(o.is_clean());
        o.truncate(5, 5);
        assert!(o.is_clean());
    }

    #[test]
    fn apply_makes_the_backing_file_match_the_mount() {
        let mut backing = Mem(b"abcdefgh".to_vec());
        let mut o = Overlay::default();
        o.truncate(2, 8);
        write(&mut o, &backing, 4, b"XY");
        o.truncate(7, 8);
        let expected = all(&o, &backing);
        assert_eq!(expected, b"ab\0\0XY\0");
        o.apply(&mut backing).unwrap();
        assert_eq!(backing.0, expected);
    }

    #[test]
    fn dropping_the_overlay_leaves_only_the_backing_file() {
        let backing = Mem(b"synced".to_vec());
        let mut o = Overlay::default();
        write(&mut o, &backing, 6, b" and not synced");
        o.truncate(3, 6);
        assert_eq!(all(&o, &backing), b"syn");
        let dropped = std::mem::take(&mut o);
        assert!(!dropped.is_clean());
        assert_eq!(all(&o, &backing), b"synced");
    }

    #[test]
    fn a_write_that_overflows_the_offset_is_refused() {
        let mut o = Overlay::default();
        let err = o.write(u64::MAX - 1, b"abc", 0).unwrap_err();
        assert_eq!(
            err,
            TooLarge {
                offset: u64::MAX - 1,
                len: 3
            }
        );
        assert!(o.is_clean());
    }

    /// A tiny deterministic generator, so a failing seed can be replayed.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn a_failed_sync_loses_the_unsynced_bytes_but_they_stay_readable() {
        let mut backing = Mem(b"synced".to_vec());
        let mut o = Overlay::default();
        write(&mut o, &backing, 6, b" lost");
        o.fail_sync();
        assert_eq!(o.lost_bytes(), 5);
        assert_eq!(all(&o, &backing), b"synced lost");
        // A later write after the lost bytes is ordinary unsynced data.
        write(&mut o, &backing, 11, b"!");
        assert_eq!(o.lost_bytes(), 5);
        // A successful sync writes the size and the new byte, not the lost
        // ones: the disk has zeros there.
        sync(&mut o, &mut backing);
        assert_eq!(backing.0, b"synced\0\0\0\0\0!");
        assert_eq!(all(&o, &backing), b"synced lost!");
        assert_eq!(o.unsynced_bytes(), 5);
        assert_eq!(o.lost_bytes(), 5);
        // Syncing again still does not write them.
        sync(&mut o, &mut backing);
        assert_eq!(backing.0, b"synced\0\0\0\0\0!");
        // Writing them again makes them ordinary data, which syncs.
        write(&mut o, &backing, 7, b"LO");
        assert_eq!(o.lost_bytes(), 3);
        sync(&mut o, &mut backing);
        assert_eq!(backing.0, b"synced\0LO\0\0!");
        assert_eq!(all(&o, &backing), b"synced LOst!");
        // A power loss drops the rest: the mount shows the disk.
        o = Overlay::default();
        assert_eq!(all(&o, &backing), b"synced\0LO\0\0!");
    }

    #[test]
    fn lost_bytes_under_a_synced_region_keep_the_old_disk_bytes() {
        let mut backing = Mem(b"0123456789".to_vec());
        let mut o = Overlay::default();
        write(&mut o, &backing, 2, b"abcd");
        o.fail_sync();
        o.truncate(5, 10);
        assert_eq!(
            o.lost_bytes(),
            3,
            "truncation drops lost bytes past the end"
        );
        sync(&mut o, &mut backing);
        assert_eq!(backing.0, b"01234", "the old bytes under the lost ones");
        assert_eq!(all(&o, &backing), b"01abc");
    }

    #[test]
    fn the_tearable_tail_is_what_extends_the_backing_file() {
        let backing = Mem(b"head".to_vec());
        let mut o = Overlay::default();
        assert_eq!(o.tearable_tail(&backing).unwrap(), None);
        write(&mut o, &backing, 1, b"E");
        assert_eq!(o.tearable_tail(&backing).unwrap(), None, "no growth");
        write(&mut o, &backing, 4, b"tail");
        write(&mut o, &backing, 10, b"!");
        assert_eq!(
            o.tearable_tail(&backing).unwrap(),
            Some((4, b"tail\0\0!".to_vec())),
            "a hole reads as zeros"
        );
        // It stops at the first lost byte.
        o.fail_sync();
        write(&mut o, &backing, 4, b"TA");
        assert_eq!(
            o.tearable_tail(&backing).unwrap(),
            Some((4, b"TA".to_vec()))
        );
        // A file cut below its backing size is not a torn append.
        let mut cut = Overlay::default();
        cut.truncate(2, 4);
        write(&mut cut, &backing, 2, b"new tail");
        assert_eq!(cut.tearable_tail(&backing).unwrap(), None);
    }

    #[test]
    fn range_sets_merge_and_split() {
        let mut r = BTreeMap::new();
        insert_range(&mut r, 5, 10);
        insert_range(&mut r, 10, 12);
        insert_range(&mut r, 0, 2);
        assert_eq!(r, BTreeMap::from([(0, 2), (5, 12)]));
        insert_range(&mut r, 1, 6);
        assert_eq!(r, BTreeMap::from([(0, 12)]));
        remove_range(&mut r, 3, 4);
        assert_eq!(r, BTreeMap::from([(0, 3), (4, 12)]));
        remove_range(&mut r, 0, 20);
        assert!(r.is_empty());
    }

    /// Random writes, truncates, syncs, failed syncs and power losses
    /// against plain vectors that model the file as the mount shows it and
    /// as the disk holds it.
    #[test]
    fn random_operations_match_a_plain_vector_model() {
        for seed in 1..300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut backing = Mem((0..rng.below(40)).map(|i| i as u8).collect());
            let mut model = backing.0.clone();
            // Per byte of `model`: written since the last sync (an extent
            // byte), and lost by a failed sync.
            let mut written = vec![false; model.len()];
            let mut lost = vec![false; model.len()];
            // The smallest size truncated to since the last sync.
            let mut cut: Option<usize> = None;
            let mut o = Overlay::default();
            for step in 0..80 {
                match rng.below(14) {
                    0..=5 => {
                        let offset = rng.below(60);
                        let data: Vec<u8> =
                            (0..rng.below(20)).map(|_| rng.below(256) as u8).collect();
                        write(&mut o, &backing, offset, &data);
                        let end = offset as usize + data.len();
                        if !data.is_empty() {
                            if model.len() < end {
                                model.resize(end, 0);
                                written.resize(end, false);
                                lost.resize(end, false);
                            }
                            model[offset as usize..end].copy_from_slice(&data);
                            written[offset as usize..end].fill(true);
                            lost[offset as usize..end].fill(false);
                        }
                    }
                    6 | 7 => {
                        let size = rng.below(70) as usize;
                        o.truncate(size as u64, backing.0.len() as u64);
                        if size < model.len() {
                            cut = Some(cut.map_or(size, |c| c.min(size)));
                        }
                        model.resize(size, 0);
                        written.resize(size, false);
                        lost.resize(size, false);
                    }
                    8 => {
                        let old = backing.0.clone();
                        let keep = cut.unwrap_or(usize::MAX).min(old.len());
                        sync(&mut o, &mut backing);
                        let disk: Vec<u8> = (0..model.len())
                            .map(|i| match (lost[i], i < keep) {
                                (false, _) => model[i],
                                (true, true) => old[i],
                                (true, false) => 0,
                            })
                            .collect();
                        assert_eq!(backing.0, disk, "seed {seed} step {step}: sync");
                        written.clone_from(&lost);
                        cut = None;
                    }
                    9 => {
                        o.fail_sync();
                        lost.clone_from(&written);
                    }
                    10 => {
                        o = Overlay::default();
                        model = backing.0.clone();
                        written = vec![false; model.len()];
                        lost = vec![false; model.len()];
                        cut = None;
                    }
                    _ => {
                        let offset = rng.below(80);
                        let len = rng.below(40) as u32;
                        let got = o.read(offset, len, &backing).unwrap();
                        let from = (offset as usize).min(model.len());
                        let to = (from + len as usize).min(model.len());
                        assert_eq!(
                            got,
                            model[from..to],
                            "seed {seed} step {step}: partial read"
                        );
                    }
                }
                assert_eq!(all(&o, &backing), model, "seed {seed} step {step}");
                let extent_bytes: u64 = o.extents.values().map(|d| d.len() as u64).sum();
                assert_eq!(o.unsynced_bytes(), extent_bytes, "seed {seed} step {step}");
                let lost_count = lost.iter().filter(|l| **l).count() as u64;
                assert_eq!(o.lost_bytes(), lost_count, "seed {seed} step {step}");
                assert_eq!(o.size(backing.0.len() as u64), model.len() as u64);
                if !o.is_clean() || o.lost_bytes() > 0 {
                    continue;
                }
                assert_eq!(backing.0, model, "seed {seed} step {step}: clean");
            }
        }
    }
}
