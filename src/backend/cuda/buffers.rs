//! Device buffers that grow batch by batch: the exemplar matrix ([`GrowableRows`]) and the
//! per-partition f64 direction sums ([`DeviceSums`]). Growth moves the old rows device to
//! device; only new rows cross the bus.

use super::launch::{check_nonempty, check_rows, driver};
use super::CudaDevice;
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaView};

/// Rows of width `dim` on the device with amortised growth (capacity at least doubles), for
/// the exemplar matrix that grows batch by batch: only new rows cross to the device.
pub struct GrowableRows {
    pub(super) buf: CudaSlice<f32>,
    pub(super) rows: usize,
    pub(super) dim: usize,
}

impl GrowableRows {
    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The held rows, `rows × dim`.
    pub fn view(&self) -> CudaView<'_, f32> {
        self.buf.slice(0..self.rows * self.dim)
    }

    /// Forgets every row (capacity is kept).
    pub fn clear(&mut self) {
        self.rows = 0;
    }
}

/// Per-partition f64 direction sums resident on the device (`rows × dim`, with spare
/// capacity that is kept at zero), for a build whose statistics are updated on the GPU.
pub struct DeviceSums {
    pub(super) buf: CudaSlice<f64>,
    pub(super) rows: usize,
    pub(super) dim: usize,
}

impl DeviceSums {
    /// Partitions held.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

impl CudaDevice {
    /// An empty [`GrowableRows`] of width `dim`.
    pub fn growable_rows(&self, dim: usize) -> Result<GrowableRows> {
        check_nonempty("growable_rows", "width", dim)?;
        let buf = self.zeros::<f32>(16 * dim)?;
        Ok(GrowableRows { buf, rows: 0, dim })
    }

    /// Ensures `g` can take `extra` more rows without reallocating (the old rows move device
    /// to device when it grows; capacity at least doubles).
    pub fn reserve_rows(&self, g: &mut GrowableRows, extra: usize) -> Result<()> {
        let d = g.dim;
        let need = g.rows + extra;
        if need * d <= g.buf.len() {
            return Ok(());
        }
        let cap = need.max(2 * g.buf.len() / d).max(16);
        let mut grown = self.zeros::<f32>(cap * d)?;
        if g.rows > 0 {
            self.stream
                .memcpy_dtod(
                    &g.buf.slice(0..g.rows * d),
                    &mut grown.slice_mut(0..g.rows * d),
                )
                .map_err(driver("device → device copy"))?;
        }
        g.buf = grown;
        Ok(())
    }

    /// Appends host rows (`m × dim`) to `g`, growing its device buffer when full (the old
    /// rows move device to device).
    pub fn append_rows(&self, g: &mut GrowableRows, host: &[f32]) -> Result<()> {
        let d = g.dim;
        let m = check_rows("append_rows", "rows", host.len(), d)?;
        let need = g.rows + m;
        self.reserve_rows(g, m)?;
        if !host.is_empty() {
            self.count_h2d::<f32>(host.len());
            self.stream
                .memcpy_htod(host, &mut g.buf.slice_mut(g.rows * d..need * d))
                .map_err(driver("host → device copy"))?;
        }
        g.rows = need;
        Ok(())
    }

    /// Appends rows already on the device (`m × dim`, e.g. a prepared batch row) to `g`,
    /// growing it when full; nothing crosses to the host.
    pub fn append_device_rows(&self, g: &mut GrowableRows, rows: &CudaView<'_, f32>) -> Result<()> {
        let d = g.dim;
        let m = check_rows("append_device_rows", "rows", rows.len(), d)?;
        if m == 0 {
            return Ok(());
        }
        self.reserve_rows(g, m)?;
        self.stream
            .memcpy_dtod(rows, &mut g.buf.slice_mut(g.rows * d..(g.rows + m) * d))
            .map_err(driver("device → device copy"))?;
        g.rows += m;
        Ok(())
    }

    /// Per-partition f64 direction sums on the device, initialised from host sums (`K × dim`).
    pub fn upload_sums(&self, host: &[f64], dim: usize) -> Result<DeviceSums> {
        let rows = check_rows("upload_sums", "sums", host.len(), dim)?;
        let mut buf = self.zeros::<f64>(rows.max(16) * dim)?;
        if rows > 0 {
            self.count_h2d::<f64>(host.len());
            self.stream
                .memcpy_htod(host, &mut buf.slice_mut(0..rows * dim))
                .map_err(driver("host → device copy"))?;
        }
        Ok(DeviceSums { buf, rows, dim })
    }

    /// Grows `s` to `rows` partitions; the new ones start at zero (capacity at least doubles,
    /// old sums move device to device).
    pub fn grow_sums(&self, s: &mut DeviceSums, rows: usize) -> Result<()> {
        let d = s.dim;
        if rows <= s.rows {
            return Ok(());
        }
        if rows * d > s.buf.len() {
            let cap = rows.max(2 * s.buf.len() / d);
            let mut grown = self.zeros::<f64>(cap * d)?;
            if s.rows > 0 {
                self.stream
                    .memcpy_dtod(
                        &s.buf.slice(0..s.rows * d),
                        &mut grown.slice_mut(0..s.rows * d),
                    )
                    .map_err(driver("device → device copy"))?;
            }
            s.buf = grown;
        } else {
            // Rows past the old count may hold sums of partitions since merged away.
            self.stream
                .memset_zeros(&mut s.buf.slice_mut(s.rows * d..rows * d))
                .map_err(driver("memset"))?;
        }
        s.rows = rows;
        Ok(())
    }

    /// The sums of every partition in `s`, `rows × dim`.
    pub fn download_sums(&self, s: &DeviceSums) -> Result<Vec<f64>> {
        self.download_view(&s.buf.slice(0..s.rows * s.dim))
    }
}
