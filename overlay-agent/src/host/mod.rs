pub mod masq;
