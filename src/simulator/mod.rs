//! Placeholder: the embedded simulator is being written on the `simulator` branch.

use std::time::Duration;

pub struct RegisteredClient {
    pub client_id: String,
    pub keys: Vec<(String, rsa::RsaPublicKey)>,
    pub scopes: Vec<String>,
}

pub struct SimulatorConfig {
    pub token_lifetime: Duration,
    pub clients: Vec<RegisteredClient>,
}

pub struct SimulatorHandle {
    base_url: url::Url,
}

impl SimulatorHandle {
    pub fn base_url(&self) -> &url::Url {
        &self.base_url
    }
    pub fn issuer(&self) -> String {
        self.base_url.to_string()
    }
    pub fn public_jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": []})
    }
    pub fn register_client(&self, _client: RegisteredClient) {}
    pub async fn shutdown(self) {}
}

pub async fn start(
    _config: SimulatorConfig,
    _listener: tokio::net::TcpListener,
) -> std::io::Result<SimulatorHandle> {
    Err(std::io::Error::other("the simulator is not built yet"))
}
