//! Certificate authority, certificate issuance with embedded gateway DNS names, CSR signing, CRLs and ready rustls configurations.
