//! Training images: a folder of image files, or the MNIST digits shipped in
//! `assets/`, as a host-side array of (C, R, R) samples scaled to [-1, 1]
//! as the DDPM paper does. Batches are gathered on the host (a few hundred
//! KiB per step) and uploaded once per step.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use image::{imageops::FilterType, DynamicImage};
use rand::Rng;

/// The MNIST atlas: 100 x 100 tiles of 28x28 (see assets/mnist/README.md).
const MNIST_ATLAS: &[u8] = include_bytes!("../assets/mnist/digits.png");
const MNIST_TILE: usize = 28;

/// Digits of each class 0..9 in the atlas: the sizes of `src/digits/0.json`
/// ... `9.json` in the source package (see assets/mnist/README.md).
pub const MNIST_CLASS_COUNTS: [usize; 10] = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];

/// The class of every atlas tile, in atlas order: tiles are ordered by
/// (index within class, class), so the classes cycle 0..9 while each has
/// digits left.
pub fn mnist_labels() -> Vec<usize> {
    let longest = MNIST_CLASS_COUNTS.iter().copied().max().unwrap_or(0);
    (0..longest).flat_map(|i| (0..10).filter(move |&c| i < MNIST_CLASS_COUNTS[c])).collect()
}

pub struct Dataset {
    pub channels: usize,
    pub resolution: usize,
    /// (len, channels, resolution, resolution), values in [-1, 1].
    pixels: Vec<f32>,
    /// Each sample's class and every class's name (the MNIST digits and a
    /// folder of class subfolders have them; loose images have none).
    labels: Option<Labels>,
    /// Where each sample came from, for messages.
    pub source: String,
}

/// The classes of a labelled dataset.
struct Labels {
    /// Each sample's class index.
    of_sample: Vec<usize>,
    /// The name of each class, by index.
    names: Vec<String>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Dataset({} x {}x{}x{} from {})",
            self.len(),
            self.channels,
            self.resolution,
            self.resolution,
            self.source
        )
    }
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.pixels.len() / self.sample_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn sample_len(&self) -> usize {
        self.channels * self.resolution * self.resolution
    }

    /// Every sample, (len, C, R, R).
    pub fn pixels(&self) -> &[f32] {
        &self.pixels
    }

    pub fn sample(&self, i: usize) -> &[f32] {
        &self.pixels[i * self.sample_len()..(i + 1) * self.sample_len()]
    }

    /// How many classes the samples are labelled with (None: unlabelled).
    pub fn classes(&self) -> Option<usize> {
        self.labels.as_ref().map(|l| l.names.len())
    }

    /// The class of each of `indices` (None: unlabelled).
    pub fn labels_of(&self, indices: &[usize]) -> Option<Vec<usize>> {
        self.labels.as_ref().map(|l| indices.iter().map(|&i| l.of_sample[i]).collect())
    }

    /// A dataset of `pixels`, (len, C, R, R) in [-1, 1].
    pub fn from_pixels(channels: usize, resolution: usize, pixels: Vec<f32>, source: &str) -> Result<Dataset> {
        let len = channels * resolution * resolution;
        if len == 0 || pixels.is_empty() || !pixels.len().is_multiple_of(len) {
            bail!("{source}: {} values do not make {channels}x{resolution}x{resolution} images", pixels.len());
        }
        Ok(Dataset { channels, resolution, pixels, labels: None, source: source.to_string() })
    }

    /// Only the first `n` samples.
    pub fn truncated(mut self, n: usize) -> Dataset {
        let n = n.min(self.len());
        self.pixels.truncate(n * self.sample_len());
        if let Some(labels) = &mut self.labels {
            labels.of_sample.truncate(n);
        }
        self
    }

    /// The MNIST digits shipped with the crate, centred on a black canvas of
    /// `resolution` (28 or more; 32 is the usual power of two), 1 channel.
    pub fn mnist(resolution: usize, limit: Option<usize>) -> Result<Dataset> {
        if resolution < MNIST_TILE {
            bail!("MNIST digits are 28x28: --resolution must be at least 28, got {resolution}");
        }
        let atlas = image::load_from_memory(MNIST_ATLAS).context("decoding the shipped MNIST atlas")?.to_luma8();
        let cols = atlas.width() as usize / MNIST_TILE;
        let count = (cols * (atlas.height() as usize / MNIST_TILE)).min(limit.unwrap_or(usize::MAX));
        let pad = (resolution - MNIST_TILE) / 2;
        let mut pixels = vec![-1.0; count * resolution * resolution];
        for i in 0..count {
            let (tr, tc) = (i / cols * MNIST_TILE, i % cols * MNIST_TILE);
            let dst = &mut pixels[i * resolution * resolution..(i + 1) * resolution * resolution];
            for y in 0..MNIST_TILE {
                for x in 0..MNIST_TILE {
                    let v = atlas.get_pixel((tc + x) as u32, (tr + y) as u32).0[0];
                    dst[(y + pad) * resolution + x + pad] = v as f32 / 127.5 - 1.0;
                }
            }
        }
        let mut of_sample = mnist_labels();
        of_sample.truncate(count);
        let names = (0..MNIST_CLASS_COUNTS.len()).map(|d| d.to_string()).collect();
        let labels = Some(Labels { of_sample, names });
        Ok(Dataset { channels: 1, resolution, pixels, labels, source: "MNIST digits (assets/mnist)".into() })
    }

    /// Every image under `dir` (recursive), centre-cropped to a square and
    /// resized to `resolution`, as `channels` = 1 (grey) or 3 (RGB).
    /// Unreadable files and images smaller than `resolution` are skipped with
    /// a warning naming them; no usable image at all is an error. Laid out as
    /// torchvision's ImageFolder (every image inside a subfolder, at least
    /// two subfolders), each subfolder is a class, numbered in the sorted
    /// order of their names ([`Dataset::class_names`]).
    pub fn from_folder(dir: &Path, resolution: usize, channels: usize) -> Result<Dataset> {
        if channels != 1 && channels != 3 {
            bail!("--channels must be 1 (grey) or 3 (RGB), got {channels}");
        }
        if !dir.is_dir() {
            bail!("data folder {} does not exist or is not a folder", dir.display());
        }
        let mut files = Vec::new();
        collect_images(dir, &mut files)?;
        files.sort();
        if files.is_empty() {
            bail!("no image files (png, jpg, jpeg, bmp, gif, webp) under {}", dir.display());
        }
        let mut pixels = Vec::new();
        let mut skipped = 0;
        // The subfolder of `dir` each used image is in (None: at the top level).
        let mut folders: Vec<Option<String>> = Vec::new();
        for file in &files {
            match load_image(file, resolution) {
                Ok(img) => {
                    push_pixels(&mut pixels, &img, channels);
                    let relative = file.strip_prefix(dir).unwrap_or(file);
                    let mut parts = relative.components();
                    let folder = parts.next().filter(|_| parts.next().is_some());
                    folders.push(folder.map(|c| c.as_os_str().to_string_lossy().into_owned()));
                }
                Err(e) => {
                    eprintln!("warning: skipping {}: {e:#}", file.display());
                    skipped += 1;
                }
            }
        }
        if pixels.is_empty() {
            bail!("none of the {} image files under {} could be used (see warnings above)", files.len(), dir.display());
        }
        if skipped > 0 {
            eprintln!("warning: skipped {skipped} of {} files", files.len());
        }
        let mut names: Vec<String> = folders.iter().flatten().cloned().collect();
        names.sort();
        names.dedup();
        // Every image in a class subfolder, and at least two classes; else unlabelled.
        let of_sample: Option<Vec<usize>> =
            folders.iter().map(|f| f.as_ref().and_then(|f| names.binary_search(f).ok())).collect();
        let labels = of_sample.filter(|_| names.len() >= 2).map(|of_sample| Labels { of_sample, names });
        Ok(Dataset { channels, resolution, pixels, labels, source: dir.display().to_string() })
    }

    /// The name of each class, where the data has them (an ImageFolder's
    /// subfolders; the MNIST digits are 0..9).
    pub fn class_names(&self) -> Option<&[String]> {
        self.labels.as_ref().map(|l| l.names.as_slice())
    }

    /// Gather samples `indices` into one (batch, C, R, R) array, mirroring
    /// each horizontally with probability 1/2 when `flip`.
    pub fn batch(&self, indices: &[usize], flip: bool, rng: &mut impl Rng) -> Vec<f32> {
        let r = self.resolution;
        let mut out = Vec::with_capacity(indices.len() * self.sample_len());
        for &i in indices {
            let s = self.sample(i);
            if flip && rng.random_bool(0.5) {
                for row in s.chunks_exact(r) {
                    out.extend(row.iter().rev());
                }
            } else {
                out.extend_from_slice(s);
            }
        }
        out
    }
}

/// Image files under `dir`: regular files (or links to them) with an image
/// extension, in subfolders too. Links to folders are not followed (no
/// cycles), and FIFOs, sockets and unreadable subfolders are skipped with a
/// warning naming them.
fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["png", "jpg", "jpeg", "bmp", "gif", "webp"].contains(&e.to_lowercase().as_str()))
    };
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if let Err(e) = collect_images(&path, out) {
                eprintln!("warning: skipping folder {}: {e:#}", path.display());
            }
        } else if kind.is_symlink() && path.is_dir() {
            eprintln!("warning: not following the folder link {}", path.display());
        } else if is_image(&path) {
            // Follows a link to its target; a FIFO or socket is not a regular file.
            if path.metadata().is_ok_and(|m| m.is_file()) {
                out.push(path);
            } else {
                eprintln!("warning: skipping {}: not a regular file", path.display());
            }
        }
    }
    Ok(())
}

fn load_image(path: &Path, resolution: usize) -> Result<DynamicImage> {
    let img = image::ImageReader::open(path)?.with_guessed_format()?.decode().context("cannot decode image")?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w.min(h) < resolution {
        bail!("{w}x{h} is smaller than the training resolution {resolution}");
    }
    let side = w.min(h) as u32;
    let cropped = img.crop_imm((img.width() - side) / 2, (img.height() - side) / 2, side, side);
    Ok(cropped.resize_exact(resolution as u32, resolution as u32, FilterType::Lanczos3))
}

/// Append `img` as (C, R, R) values in [-1, 1].
fn push_pixels(out: &mut Vec<f32>, img: &DynamicImage, channels: usize) {
    let scale = |v: u8| v as f32 / 127.5 - 1.0;
    if channels == 1 {
        out.extend(img.to_luma8().pixels().map(|p| scale(p.0[0])));
    } else {
        let rgb = img.to_rgb8();
        for c in 0..3 {
            out.extend(rgb.pixels().map(|p| scale(p.0[c])));
        }
    }
}

/// The nearest-neighbour upscale that makes a sample grid legible: tiles of
/// about 128 pixels (32 or 28 -> x4, 64 -> x2, 128 and more -> x1).
pub fn grid_scale(resolution: usize) -> usize {
    (128 / resolution.max(1)).max(1)
}

/// Save one image (C, R, R) in [-1, 1] as an R x R PNG, grey when C = 1,
/// written atomically: what `ddpm sample --individual` writes and
/// `ddpm eval --samples` reads.
pub fn save_image(path: &Path, image: &[f32], channels: usize, resolution: usize) -> Result<()> {
    let r = resolution as u32;
    let plane = resolution * resolution;
    let img: DynamicImage = if channels == 1 {
        image::GrayImage::from_raw(r, r, image[..plane].iter().map(|&v| to_u8(v)).collect())
            .context("image size")?
            .into()
    } else {
        let rgb = (0..plane).flat_map(|i| (0..3).map(move |c| to_u8(image[c.min(channels - 1) * plane + i])));
        image::RgbImage::from_raw(r, r, rgb.collect()).context("image size")?.into()
    };
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    crate::unet::params::write_atomically(path, &bytes)
}

/// Save `values` of `shape` as a float32 NumPy array (`.npy`, format 1.0,
/// C order), written atomically: `numpy.load` reads it.
pub fn save_npy(path: &Path, values: &[f32], shape: &[usize]) -> Result<()> {
    ensure!(shape.iter().product::<usize>() == values.len(), "{} values for an array of shape {shape:?}", values.len());
    let dims: Vec<String> = shape.iter().map(|d| format!("{d}, ")).collect();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}", dims.concat());
    // Magic, version and length take 10 bytes; the header pads the whole to 64 and ends the line.
    header.push_str(&" ".repeat(63 - (10 + header.len()) % 64));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    crate::unet::params::write_atomically(path, &bytes)
}

/// Save images (batch, C, R, R) in [-1, 1] as a grid PNG with `cols` columns,
/// every pixel drawn as a `scale` x `scale` block (nearest neighbour) and a
/// black border of 2 x `scale` pixels around and between the tiles, written
/// atomically. The PNG is (cols * (R + 2) + 2) * scale pixels wide.
pub fn save_grid(
    path: &Path,
    images: &[f32],
    channels: usize,
    resolution: usize,
    cols: usize,
    scale: usize,
) -> Result<()> {
    let (r, s) = (resolution, scale.max(1));
    let n = images.len() / (channels * r * r);
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols);
    let pad = 2;
    let (w, h) = ((cols * (r + pad) + pad) * s, (rows * (r + pad) + pad) * s);
    let mut grid = image::RgbImage::new(w as u32, h as u32);
    for i in 0..n {
        let (gx, gy) = ((pad + i % cols * (r + pad)) * s, (pad + i / cols * (r + pad)) * s);
        let img = &images[i * channels * r * r..(i + 1) * channels * r * r];
        for y in 0..r {
            for x in 0..r {
                let px = |c: usize| to_u8(img[(c.min(channels - 1) * r + y) * r + x]);
                let rgb = image::Rgb([px(0), px(1), px(2)]);
                for (dy, dx) in (0..s).flat_map(|dy| (0..s).map(move |dx| (dy, dx))) {
                    grid.put_pixel((gx + x * s + dx) as u32, (gy + y * s + dy) as u32, rgb);
                }
            }
        }
    }
    let mut bytes = Vec::new();
    grid.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    crate::unet::params::write_atomically(path, &bytes)
}

/// [-1, 1] to [0, 255], as the paper's sampler outputs.
pub fn to_u8(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
}
