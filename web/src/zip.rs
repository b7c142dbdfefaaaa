//! A zip archive of files stored as they are (no compression: safetensors
//! weights barely compress), which every unzip tool and Python's zipfile
//! read. The layout is PKWARE's APPNOTE: each file's local header and
//! bytes, then the central directory, then its end record.

/// `files` (path, contents) as one zip archive. Sizes must fit zip's
/// 32-bit fields (4 GiB), which a page's checkpoint always does.
pub fn stored(files: &[(String, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut directory = Vec::new();
    for (name, bytes) in files {
        let offset = out.len() as u32;
        let (crc, size) = (crc32(bytes), bytes.len() as u32);
        // Fields shared by the local header and the directory entry: version
        // needed 2.0, no flags, stored, time and date 0, the CRC and sizes.
        let mut common = Vec::new();
        common.extend(20u16.to_le_bytes());
        common.extend(0u16.to_le_bytes());
        common.extend(0u16.to_le_bytes());
        common.extend(0u32.to_le_bytes());
        common.extend(crc.to_le_bytes());
        common.extend(size.to_le_bytes());
        common.extend(size.to_le_bytes());
        common.extend((name.len() as u16).to_le_bytes());
        common.extend(0u16.to_le_bytes()); // no extra field

        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend(&common);
        out.extend(name.as_bytes());
        out.extend(*bytes);

        directory.extend(0x0201_4b50u32.to_le_bytes());
        directory.extend(20u16.to_le_bytes()); // made by: version 2.0
        directory.extend(&common);
        directory.extend([0u8; 6]); // comment length, disk, internal attributes
        directory.extend(0u32.to_le_bytes()); // external attributes
        directory.extend(offset.to_le_bytes());
        directory.extend(name.as_bytes());
    }
    let directory_offset = out.len() as u32;
    out.extend(&directory);
    let count = (files.len() as u16).to_le_bytes();
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]); // this disk, the directory's disk
    out.extend(count);
    out.extend(count);
    out.extend((directory.len() as u32).to_le_bytes());
    out.extend(directory_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes()); // no comment
    out
}

/// CRC-32 (the IEEE polynomial, reflected), bit by bit: a checkpoint is a
/// few megabytes, so no table is needed.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
