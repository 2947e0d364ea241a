//! The register-access seam between drivers and hardware: drivers speak to a
//! [`RegisterAccess`], which is BAR0 through VFIO in the daemon and a small device model in unit
//! tests.

/// 32-bit register access at byte offsets from the start of a BAR.
pub trait RegisterAccess {
    /// Reads the register at `offset`.
    fn read32(&self, offset: u32) -> u32;
    /// Writes `value` to the register at `offset`.
    fn write32(&self, offset: u32, value: u32);
}
