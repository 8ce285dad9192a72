//! Where the draft model runs: a GPU through burn's wgpu backend (WebGPU in browsers, Vulkan,
//! Metal or DX12 natively), or the CPU: burn's flex backend natively, ndarray in wasm.
//!
//! A Scout asks for the GPU first and falls back to the CPU with a notice the UI can show,
//! since a CPU Scout drafts far fewer tokens per second. On the CPU it uses burn's flex
//! backend (a `gemm`-based matmul, about 5x faster than ndarray on the default draft, where
//! ndarray's matmul repacks the whole weight matrix for every one-row product); ndarray stays
//! available as the reference the conformance tests run on.

use burn_tensor::Device;

/// Which backend a draft model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// burn's wgpu backend.
    Gpu,
    /// burn's flex backend (CPU).
    Flex,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Gpu => "gpu (wgpu)",
            BackendKind::Flex => "cpu (flex)",
        })
    }
}

/// A device with what it is, and, for a fallback, why.
#[derive(Debug, Clone)]
pub struct Backend {
    pub device: Device,
    pub kind: BackendKind,
    /// Set when the GPU was asked for but the CPU is used: the reason, for the user.
    pub fallback_reason: Option<String>,
}

/// burn's flex CPU device, the faster CPU backend.
pub fn flex_device() -> Device {
    Device::flex()
}

/// burn's ndarray CPU device, the reference backend, available on every target.
#[allow(deprecated)] // burn 0.22 marks ndarray deprecated in favour of flex; ndarray is what runs in wasm here.
pub fn cpu_device() -> Device {
    Device::ndarray()
}

/// The default GPU adapter, natively (Vulkan, Metal, DX12; Mesa's lavapipe counts). Set up
/// once per process: cubecl refuses a second registration of the same device, so later calls
/// get the first one's outcome.
#[cfg(all(feature = "wgpu", not(target_arch = "wasm32")))]
pub fn gpu_device() -> Result<Device, String> {
    static GPU: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    GPU.get_or_init(|| Device::wgpu_options().init().map_err(|e| e.to_string())).clone()
}

/// The default GPU adapter, asynchronously (the only way in a browser: WebGPU).
#[cfg(any(feature = "wgpu", target_arch = "wasm32"))]
pub async fn gpu_device_async() -> Result<Device, String> {
    Device::wgpu_options().init_async().await.map_err(|e| e.to_string())
}

/// The GPU where one is compiled in and present, else the CPU with the reason.
pub async fn select(prefer_gpu: bool) -> Backend {
    if !prefer_gpu {
        return Backend { device: flex_device(), kind: BackendKind::Flex, fallback_reason: None };
    }
    match try_gpu().await {
        Ok(device) => Backend { device, kind: BackendKind::Gpu, fallback_reason: None },
        Err(reason) => Backend { device: flex_device(), kind: BackendKind::Flex, fallback_reason: Some(reason) },
    }
}

#[cfg(any(feature = "wgpu", target_arch = "wasm32"))]
async fn try_gpu() -> Result<Device, String> {
    gpu_device_async().await.map_err(|e| format!("no GPU adapter: {e}"))
}

#[cfg(not(any(feature = "wgpu", target_arch = "wasm32")))]
async fn try_gpu() -> Result<Device, String> {
    Err("this build has no GPU backend (build with the `wgpu` feature)".to_string())
}
