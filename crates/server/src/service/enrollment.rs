//! Enrollment and certificate renewal: a device joins with a token and later asks for the certificate that succeeds its own.

use super::*;

impl AdminService {
    /// [`enroll`](Self::enroll) on the (virtual) server holding the token of `req`: this
    /// one, or the one its [`EnrollmentRouter`] names.
    pub async fn enroll_routed(
        &self,
        req: &EnrollRequest,
        remote_addr: &str,
    ) -> Result<EnrollResponse, ServerError> {
        match self.enrollment_elsewhere(req) {
            Some(other) => other.enroll(req, remote_addr).await,
            None => self.enroll(req, remote_addr).await,
        }
    }

    /// The service of another (virtual) server holding the token of `req`, if this one
    /// does not hold it.
    pub(super) fn enrollment_elsewhere(&self, req: &EnrollRequest) -> Option<Arc<AdminService>> {
        if self.holds_token(&req.enrollment_token, &req.device_id) {
            return None;
        }
        self.router
            .get()?
            .upgrade()?
            .service_for_token(&req.enrollment_token, &req.device_id)
    }

    /// Issues `device` its reserve certificate for the key of `req` (the connection
    /// authenticated the device; the request's own names are ignored). The reserve is
    /// committed before it is answered, so the device can present it from then on. At most
    /// one per [`ServiceConfig::min_renewal_interval`].
    pub async fn renew(
        &self,
        device: &str,
        req: &RenewRequest,
    ) -> Result<RenewResponse, ServerError> {
        let now = Instant::now();
        if let Some(last) = lock(&self.renewed).get(device)
            && now.duration_since(*last) < self.config.min_renewal_interval
        {
            return Err(ServerError::RenewalTooSoon {
                device: device.into(),
                retry_after_secs: (self.config.min_renewal_interval - now.duration_since(*last))
                    .as_secs()
                    .max(1),
            });
        }
        let as_enrollment = EnrollRequest {
            device_id: device.into(),
            csr_der: req.csr_der.clone(),
            ..Default::default()
        };
        let signed = sign_enrollment(
            &self.ca,
            &as_enrollment,
            self.virtual_server(),
            SystemTime::now(),
        )?;
        let reserve = crate::ReserveCertificate::new(
            &signed.sha256,
            signed.serial.clone(),
            signed.expires_unix,
        );
        self.update_registry(|r| r.set_reserve_certificate(device, reserve))
            .await?;
        lock(&self.renewed).insert(device.into(), now);
        self.stats.renewed.fetch_add(1, Ordering::Relaxed);
        let e = EventRecord::server(
            Some(device),
            outpost_wire::messages::Severity::Info,
            "device.certificate.reserve",
            format!(
                "reserve certificate issued (serial {}, expires {})",
                signed.serial, signed.expires_unix
            ),
        );
        if let Err(e) = self.storage.record_events(vec![e]).await {
            tracing::warn!("reserve certificate event not stored: {e}");
        }
        let r = signed.response;
        Ok(RenewResponse {
            certificate_der: r.certificate_der,
            chain_der: r.chain_der,
            ca_der: r.ca_der,
        })
    }

    /// The enrollment path of an enrollment connection from `remote_addr`, without the
    /// connection: the checks, the signing (with no lock held), and the commit of the
    /// device, which is durable before this returns the certificate. A refusal is counted
    /// against the source address (unless the database failed: retryable) and recorded as
    /// an event.
    pub async fn enroll(
        &self,
        req: &EnrollRequest,
        remote_addr: &str,
    ) -> Result<EnrollResponse, ServerError> {
        if self.is_disabled() {
            return Err(ServerError::Disabled(
                self.virtual_server().unwrap_or_default().into(),
            ));
        }
        let now = SystemTime::now();
        let admitted = admit(&lock(&self.registry), req, now);
        let signed =
            admitted.and_then(|_| sign_enrollment(&self.ca, req, self.virtual_server(), now));
        let result = match signed {
            Ok(signed) => {
                self.update_registry(|reg| record_enrollment(reg, req, signed, now))
                    .await
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(resp) => {
                self.sync.on_enrolled(&req.device_id, &resp.group);
                self.stats.enrolled.fetch_add(1, Ordering::Relaxed);
                tracing::info!("enrolled device {:?} from {remote_addr}", req.device_id);
            }
            Err(e) if e.is_retryable() => {
                // Not the agent's fault: no failure counted against its address.
                self.stats.enroll_refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!("enrollment from {remote_addr} not recorded: {e}");
            }
            Err(e) => {
                self.stats.enroll_refused.fetch_add(1, Ordering::Relaxed);
                let source = source_of(remote_addr).to_string();
                tracing::warn!("enrollment from {remote_addr} refused: {e}");
                self.server_event(EventRecord::server(
                    None,
                    Severity::Warning,
                    "enrollment.refused",
                    format!("from {remote_addr}: {e}"),
                ));
                if lock(&self.throttle).failed(&source, Instant::now()) {
                    tracing::warn!(
                        "enrollment from {source}: {} failures within {:?}; its \
                         attempts are refused unchecked until the window ends",
                        self.config.enroll_failures_per_source,
                        self.config.enroll_failure_window
                    );
                }
            }
        }
        result
    }
}
