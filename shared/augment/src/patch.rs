/// One training patch: image channels and the label on the same `dims` grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    /// `channels × z × y × x` values, row-major `[C, Z, Y, X]` (x fastest), as [`volume::Volume`].
    pub image: Vec<f32>,
    /// `z × y × x` class ids, row-major `[Z, Y, X]`.
    pub label: Vec<u8>,
    /// Voxels along x, y, z.
    pub dims: [usize; 3],
    pub channels: usize,
}

impl Patch {
    /// # Panics
    /// When the buffer lengths do not match `dims` and `channels`.
    pub fn new(image: Vec<f32>, label: Vec<u8>, dims: [usize; 3], channels: usize) -> Self {
        let n = dims[0] * dims[1] * dims[2];
        assert_eq!(
            image.len(),
            channels * n,
            "patch image length != channels × voxels"
        );
        assert_eq!(label.len(), n, "patch label length != voxels");
        Self {
            image,
            label,
            dims,
            channels,
        }
    }

    /// Voxels per channel.
    pub fn voxels(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    /// Linear index of voxel (x, y, z) within one channel.
    #[inline]
    pub fn index(&self, x: usize, y: usize, z: usize) -> usize {
        x + self.dims[0] * (y + self.dims[1] * z)
    }

    /// The image data of channel `c`.
    pub fn channel(&self, c: usize) -> &[f32] {
        let n = self.voxels();
        &self.image[c * n..(c + 1) * n]
    }

    /// Each image channel as its own mutable slice.
    pub fn channels_mut(&mut self) -> std::slice::ChunksExactMut<'_, f32> {
        let n = self.voxels().max(1);
        self.image.chunks_exact_mut(n)
    }
}
