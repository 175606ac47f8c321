drop function draftd_claim(text, interval, bigint, jsonb);
