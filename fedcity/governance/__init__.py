"""Agencies stay in control: certificates and enrollment, policy, privacy-budget ledger, audit."""
