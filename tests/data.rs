//! Training data: the shipped MNIST digits, image folders (with the bad
//! files people have), batches with flips, and sample grids.

use std::path::PathBuf;

use ddpm_wgpu::data::{grid_scale, save_grid, save_npy, to_u8, Dataset};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn mnist_is_shipped_and_centred() {
    let d = Dataset::mnist(32, None).unwrap();
    assert_eq!((d.len(), d.channels, d.resolution), (10_000, 1, 32));
    let s = d.sample(0);
    assert!(s.iter().all(|v| (-1.0..=1.0).contains(v)));
    // The 2-pixel frame added around the 28x28 digit is black.
    assert!(s[..64].iter().all(|&v| v == -1.0));
    // A digit has ink.
    assert!(s.iter().filter(|&&v| v > 0.5).count() > 30);
    assert!(Dataset::mnist(16, None).is_err());
    assert_eq!(Dataset::mnist(28, Some(16)).unwrap().len(), 16);
}

#[test]
fn folder_loading_skips_bad_files_and_reports_empty_ones() {
    let dir = temp_dir("folder");
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    let img = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 200]));
    img.save(dir.join("nested/wide.png")).unwrap();
    image::RgbImage::new(8, 8).save(dir.join("tiny.png")).unwrap();
    std::fs::write(dir.join("corrupt.jpg"), b"not a jpeg at all").unwrap();
    std::fs::write(dir.join("notes.txt"), b"ignored").unwrap();
    let d = Dataset::from_folder(&dir, 16, 3).unwrap();
    assert_eq!(d.len(), 1, "only the good image is used");
    assert_eq!(d.sample(0).len(), 3 * 16 * 16);
    let grey = Dataset::from_folder(&dir, 16, 1).unwrap();
    assert_eq!(grey.sample(0).len(), 16 * 16);
    assert!(Dataset::from_folder(&dir, 16, 2).is_err());

    let empty = temp_dir("empty");
    let err = Dataset::from_folder(&empty, 16, 3).unwrap_err().to_string();
    assert!(err.contains("no image files"), "{err}");
    let err = Dataset::from_folder(&empty.join("missing"), 16, 3).unwrap_err().to_string();
    assert!(err.contains("does not exist"), "{err}");
    std::fs::write(empty.join("bad.png"), b"garbage").unwrap();
    let err = Dataset::from_folder(&empty, 16, 3).unwrap_err().to_string();
    assert!(err.contains("could be used"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

/// One subfolder per class (torchvision's ImageFolder): classes in sorted
/// name order, each image labelled by the subfolder it is in (nested
/// folders included), a class of unusable files dropped; a loose image at
/// the top or a single class leaves the data unlabelled.
#[test]
fn class_subfolders_label_the_images() {
    let dir = temp_dir("classes");
    // Each class's images have their own grey level, so a sample's label can be read off it.
    let grey = |v: u8| image::GrayImage::from_pixel(16, 16, image::Luma([v]));
    for (class, v) in [("zebra", 250u8), ("cat", 10), ("dog", 130)] {
        std::fs::create_dir_all(dir.join(class).join("more")).unwrap();
        grey(v).save(dir.join(class).join("a.png")).unwrap();
        grey(v).save(dir.join(class).join("more/b.png")).unwrap();
    }
    std::fs::create_dir_all(dir.join("broken")).unwrap();
    std::fs::write(dir.join("broken/x.png"), b"garbage").unwrap();
    let d = Dataset::from_folder(&dir, 16, 1).unwrap();
    assert_eq!(d.len(), 6);
    assert_eq!(d.class_names().unwrap(), ["cat", "dog", "zebra"]);
    assert_eq!(d.classes(), Some(3));
    let labels = d.labels_of(&(0..6).collect::<Vec<_>>()).unwrap();
    for (i, &label) in labels.iter().enumerate() {
        let level = ((d.sample(i)[0] + 1.0) * 127.5).round() as u8;
        assert_eq!(label, [10, 130, 250].iter().position(|&v| v == level).unwrap(), "sample {i}");
    }
    assert_eq!(d.truncated(3).labels_of(&[2]), Some(vec![1]));
    grey(0).save(dir.join("loose.png")).unwrap();
    assert_eq!(Dataset::from_folder(&dir, 16, 1).unwrap().classes(), None, "a loose image: no classes");
    let one = temp_dir("one-class");
    std::fs::create_dir_all(one.join("only")).unwrap();
    grey(0).save(one.join("only/a.png")).unwrap();
    assert_eq!(Dataset::from_folder(&one, 16, 1).unwrap().classes(), None, "one subfolder: no classes");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&one).unwrap();
}

#[test]
fn batches_gather_and_flip() {
    let d = Dataset::mnist(28, Some(4)).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let plain = d.batch(&[2, 0], false, &mut rng);
    assert_eq!(&plain[..784], d.sample(2));
    assert_eq!(&plain[784..], d.sample(0));
    // Over many draws, each sample appears both as is and mirrored.
    let (mut mirrored, mut kept) = (0, 0);
    for _ in 0..64 {
        let b = d.batch(&[1], true, &mut rng);
        let row = &d.sample(1)[10 * 28..11 * 28];
        if b[10 * 28..11 * 28] == *row {
            kept += 1;
        }
        if b[10 * 28..11 * 28].iter().eq(row.iter().rev()) {
            mirrored += 1;
        }
    }
    assert!(mirrored > 10 && kept > 10, "mirrored {mirrored}, kept {kept}");
}

#[test]
fn grids_are_written_and_read_back() {
    let d = Dataset::mnist(32, Some(6)).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let images = d.batch(&[0, 1, 2, 3, 4, 5], false, &mut rng);
    let dir = temp_dir("grid");
    let path = dir.join("grid.png");
    save_grid(&path, &images, 1, 32, 3, 1).unwrap();
    let back = image::open(&path).unwrap().to_rgb8();
    assert_eq!((back.width(), back.height()), (3 * 34 + 2, 2 * 34 + 2));
    // Pixel (2 + x, 2 + y) of the grid is pixel (x, y) of the first image.
    let want = to_u8(d.sample(0)[14 * 32 + 14]);
    assert_eq!(back.get_pixel(16, 16).0, [want; 3]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn grids_upscale_each_pixel_to_a_block() {
    // Three RGB 5x5 images in 2 columns at scale 3: every source pixel is a 3x3
    // block, the border is 2 x 3 = 6 black pixels, the empty fourth cell black.
    let (n, c, r, cols, scale) = (3, 3, 5, 2, 3);
    let mut rng = StdRng::seed_from_u64(1);
    let images: Vec<f32> = (0..n * c * r * r).map(|_| rng.random_range(-1.0..=1.0)).collect();
    let dir = temp_dir("grid-scale");
    let path = dir.join("grid.png");
    save_grid(&path, &images, c, r, cols, scale).unwrap();
    let back = image::open(&path).unwrap().to_rgb8();
    let pad = 2 * scale;
    assert_eq!((back.width() as usize, back.height() as usize), (2 * (5 * 3 + pad) + pad, 2 * (5 * 3 + pad) + pad));
    let mut painted = 0;
    for (x, y, p) in back.enumerate_pixels() {
        let (x, y) = (x as usize, y as usize);
        let cell = (x.saturating_sub(pad) / (r * scale + pad), y.saturating_sub(pad) / (r * scale + pad));
        let (ix, iy) = ((x - pad.min(x)) % (r * scale + pad), (y - pad.min(y)) % (r * scale + pad));
        let i = cell.1 * cols + cell.0;
        let inside = x >= pad && y >= pad && ix < r * scale && iy < r * scale && i < n;
        let want = if inside {
            let (sx, sy) = (ix / scale, iy / scale);
            painted += 1;
            [0, 1, 2].map(|ch| to_u8(images[((i * c + ch) * r + sy) * r + sx]))
        } else {
            [0, 0, 0]
        };
        assert_eq!(p.0, want, "pixel ({x}, {y}) of cell {cell:?}");
    }
    assert_eq!(painted, n * r * r * scale * scale);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn grid_scale_makes_tiles_about_128_pixels() {
    let scales: Vec<usize> = [28, 32, 64, 100, 128, 256, 8, 0].map(grid_scale).to_vec();
    assert_eq!(scales, vec![4, 4, 2, 1, 1, 1, 16, 128]);
}

#[test]
fn npy_files_hold_the_values_numpy_reads() {
    let dir = temp_dir("npy");
    let mut r = StdRng::seed_from_u64(3);
    for shape in [vec![3, 1, 5, 5], vec![2, 3, 8, 8], vec![7]] {
        let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| r.random_range(-1.0..1.0)).collect();
        let path = dir.join("x.npy");
        save_npy(&path, &values, &shape).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        // numpy requires the data to start on a 64-byte boundary, after a newline.
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.ends_with('\n'));
        let dims: Vec<String> = shape.iter().map(|d| format!("{d}, ")).collect();
        let want = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims.concat());
        assert_eq!(header.trim_end(), want);
        let read: Vec<f32> =
            bytes[10 + header_len..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert!(read.iter().zip(&values).all(|(a, b)| a.to_bits() == b.to_bits()) && read.len() == values.len());
    }
    assert!(save_npy(&dir.join("bad.npy"), &[1.0, 2.0], &[3]).is_err(), "a shape that does not hold the values");
    std::fs::remove_dir_all(&dir).unwrap();
}
